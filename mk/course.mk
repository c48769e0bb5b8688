# Course targets (issue #13), included at the end of the Makefile; uses its PY, STAMP, VENV, NOTEBOOKS.
#   make student        student copies of notebooks/ without solution cells, outputs cleared -> build/student/
#   make site           Jupyter Book of the executed notebooks (make notebooks) -> build/site/_build/html/:
#                       the public site, every solution cell removed and no instructor guide
#   make site-instructor  the same with the solutions and docs/INSTRUCTOR.md -> build/site-instructor/ (keep private)
#   make test-browser   notebook 09's widgets in JupyterLab + headless Chromium (not part of make test)
#   make course-plan    every distinct training of the series (PROFILE), with keys and costs -> build/course/plan.json
#   make course-train   train that plan side by side (WORKERS processes; one per GPU on a GPU machine)
#   make course-pack    the trained runs + the reference execution's tables (make notebooks) -> build/course/course.tar
STUDENT_DIR := build/student
SITE_DIR    := build/site
INSTRUCTOR_SITE_DIR := build/site-instructor
# Debian's Chromium (never `playwright install`: it downloads a browser). Root installs it directly.
CHROMIUM    ?= /usr/bin/chromium
APT_GET     := $(if $(filter 0,$(shell id -u)),apt-get,sudo apt-get)

COURSE_DIR  := build/course
WORKERS     ?= 1

.PHONY: student site site-instructor test-browser course-plan course-train course-pack

course-plan: $(STAMP)
	$(PY) -m zsadlab.course plan --profile $(PROFILE) --json $(COURSE_DIR)/plan.json $(NOTEBOOKS)

course-train: course-plan
	$(PY) -m zsadlab.course train --plan $(COURSE_DIR)/plan.json --workers $(WORKERS)

course-pack: $(STAMP)
	$(PY) -m zsadlab.course pack build $(COURSE_DIR)/course.tar --plan $(COURSE_DIR)/plan.json --reference figures

student: $(STAMP)
	$(PY) -m zsadlab.course student --out $(STUDENT_DIR) $(NOTEBOOKS)

# The `site` extra (jupyter-book 1.x) is installed on first use only.
site: $(STAMP)
	@$(PY) -c "import jupyter_book" 2>/dev/null || $(PY) -m pip install --quiet -e ".[site]"
	$(PY) -m zsadlab.course site --executed build/notebooks --fallback tests/notebooks/baselines \
		--out $(SITE_DIR) --jupyter-book $(VENV)/bin/jupyter-book $(NOTEBOOKS)

site-instructor: $(STAMP)
	@$(PY) -c "import jupyter_book" 2>/dev/null || $(PY) -m pip install --quiet -e ".[site]"
	$(PY) -m zsadlab.course site --instructor --executed build/notebooks --fallback tests/notebooks/baselines \
		--out $(INSTRUCTOR_SITE_DIR) --jupyter-book $(VENV)/bin/jupyter-book $(NOTEBOOKS)

test-browser: $(STAMP)
	@test -x $(CHROMIUM) || $(APT_GET) install -y chromium chromium-driver
	@$(PY) -c "import playwright" 2>/dev/null || $(PY) -m pip install --quiet playwright
	ZSADLAB_BROWSER=1 ZSADLAB_CHROMIUM=$(CHROMIUM) $(PY) -m pytest -q -p no:cacheprovider tests/browser
