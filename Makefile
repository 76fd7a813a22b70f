PY := .venv/bin/python
STAMP := .venv/.installed
# a few images of the synthetic test split (the last 10% of data/synth)
DEMO_IMAGES := data/synth/images/036000.png data/synth/images/036001.png data/synth/images/036002.png data/synth/images/036003.png

.PHONY: test demo bench clean

# The venv is rebuilt when either requirements file changes.
$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

# draw the synthetic set, train a tiny CLIP + decoder from scratch on the CPU, then predict a few test images
demo: $(STAMP)
	$(PY) data.py synth
	$(PY) train.py --dataset=synth --overwrite=True
	$(PY) sample.py $(DEMO_IMAGES) --ckpt=out/ckpt.pt --out=out/samples --attention=True

bench: $(STAMP)
	$(PY) bench.py

clean:
	rm -rf .venv .pytest_cache
