# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
# The CPU build of torch lies on the build machines' disks; an unpinned torch pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0
DEMO   := data/demo

.PHONY: demo test venv bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]' $(TORCH)  # pinned: timm (of dynamic-network-architectures) pulls torchvision, whose newest release wants a newer (CUDA) torch
	touch $@

venv: $(VENV)/.installed

demo: venv
	rm -rf $(DEMO)
	@echo "== 1. miniature raw datasets in the real layouts (MSD, LiTS, LIDC-IDRI, VISCERAL)"
	$(BIN)/med3d-prep sample $(DEMO)/raw
	@echo "== 2. the eight 3DSeg-8 tasks -> zarr store + catalog (dask LocalCluster)"
	$(BIN)/med3d-prep build-3dseg8 $(DEMO)/raw/msd $(DEMO)/store --no-progress
	$(BIN)/med3d-prep info $(DEMO)/store
	@echo "== 3. the transfer datasets: LiTS (window -200..250 HU), LIDC-IDRI (nodule crops), VISCERAL (lungs),"
	@echo "      and 'your own data': the hippocampus sample in nnU-Net v2 layout (imagesTr/labelsTr/imagesTs)"
	$(BIN)/med3d-prep build-lits $(DEMO)/raw/lits $(DEMO)/lits_store --no-progress
	$(BIN)/med3d-prep build-lidc $(DEMO)/raw/lidc $(DEMO)/lidc_store --no-progress
	$(BIN)/med3d-prep build-visceral $(DEMO)/raw/visceral $(DEMO)/visceral_store --no-progress
	$(BIN)/med3d-prep build-nnunet $(DEMO)/raw/nnunet/Dataset004_Hippocampus $(DEMO)/hippo_store --no-progress
	$(BIN)/med3d-prep info $(DEMO)/lidc_store
	@echo "== 4. Med3D multi-branch pretraining of a ResNet-10 on the CPU (a few steps), keeping out of pretraining"
	@echo "      the LiTS validation scans (MSD Task03_Liver holds them under other names) and every scan of the"
	@echo "      'own data' hippocampus store (the 3DSeg-8 store holds the same scans as MSD Task04_Hippocampus):"
	@echo "      7 domains are pretrained, and the seg and classify runs below are measured on unseen scans"
	$(BIN)/med3d-train pretrain $(DEMO)/store --out $(DEMO)/runs/pretrain --depth 10 --steps 12 --batch 2 \
		--patch 32 --device cpu --workers 0 --val-every 12 --ckpt-every 6 --exclude $(DEMO)/lits_store:val \
		--exclude $(DEMO)/hippo_store --no-progress
	@echo "== 5. export the encoder in MedicalNet's format"
	$(BIN)/med3d-train export $(DEMO)/runs/pretrain/checkpoint.pt --format medicalnet $(DEMO)/runs/resnet_10_med3d.pth
	@echo "== 6. transfer: the two-stage LiTS liver recipe (coarse whole-volume + fine ROI with DenseASPP) from the"
	@echo "      demo's pretrained encoder (finetune refuses an encoder that saw the LiTS val scans)"
	$(BIN)/med3d-train finetune liver $(DEMO)/lits_store --out $(DEMO)/runs/liver --init $(DEMO)/runs/pretrain \
		--steps 12 --batch 2 --patch 16,32,32 --coarse-shape 16,32,32 --aspp-rates 1,2,3 --device cpu \
		--workers 0 --val-every 6 --ckpt-every 6 --no-progress
	@echo "== 7. evaluate on the LiTS val split: LiTS metrics on each source file's own grid, predictions written"
	$(BIN)/med3d-train evaluate $(DEMO)/runs/liver $(DEMO)/lits_store --split val --no-progress
	@echo "== 8. predict a raw LiTS test volume: its mask in the volume's own geometry (a LiTS submission file)"
	$(BIN)/med3d-train predict $(DEMO)/runs/liver $(DEMO)/raw/lits/test-volume-0.nii --out $(DEMO)/predictions
	$(BIN)/med3d-train compare $(DEMO)/runs/liver --out $(DEMO)/runs
	@echo "== 9. your own data, segmentation: finetune seg on the nnU-Net-layout store (classes and names from its"
	@echo "      dataset.json) from the demo's encoder with a U-Net decoder; evaluate (per-class Dice, HD95, ASSD"
	@echo "      in mm on the val scan's own grid); predict the imagesTs folder (<case>.nii.gz, as nnU-Net names it)"
	$(BIN)/med3d-train finetune seg $(DEMO)/hippo_store --out $(DEMO)/runs/hippocampus --init $(DEMO)/runs/pretrain \
		--decoder unet --steps 8 --batch 2 --patch 32 --device cpu --workers 0 --val-every 4 --ckpt-every 4 \
		--no-progress
	$(BIN)/med3d-train evaluate $(DEMO)/runs/hippocampus $(DEMO)/hippo_store --no-progress
	$(BIN)/med3d-train predict $(DEMO)/runs/hippocampus $(DEMO)/raw/nnunet/Dataset004_Hippocampus/imagesTs \
		--out $(DEMO)/predictions/hippocampus
	@echo "== 10. your own data, classification from a label table: each labelled hippocampus case is 'large' or"
	@echo "      'small' (its mask's volume, catalog column foreground_mm3, above or below the median), every third"
	@echo "      by volume to test; finetune classify on whole volumes resized to 32^3 from the demo's encoder;"
	@echo "      evaluate (accuracy, balanced accuracy, macro AUC, confusion); predict class probabilities of imagesTs"
	$(PY) -c "from catalog import load_catalog; c = load_catalog('$(DEMO)/hippo_store').query('has_label')\
		.sort_values('foreground_mm3').reset_index(); v = c.foreground_mm3; c['label'] = (v > v.median())\
		.map({True: 'large', False: 'small'}); c['split'] = ['test' if i % 3 == 1 else 'train' for i in c.index];\
		c[['case_id', 'label', 'split', 'foreground_mm3']].to_csv('$(DEMO)/hippocampus_volume.csv', index=False)"
	@cat $(DEMO)/hippocampus_volume.csv
	$(BIN)/med3d-train finetune classify $(DEMO)/hippo_store --labels $(DEMO)/hippocampus_volume.csv \
		--out $(DEMO)/runs/hippocampus_volume --init $(DEMO)/runs/pretrain --shape 32,32,32 --steps 6 --batch 2 \
		--device cpu --workers 0 --val-every 3 --ckpt-every 3 --no-progress
	$(BIN)/med3d-train evaluate $(DEMO)/runs/hippocampus_volume $(DEMO)/hippo_store --no-progress
	$(BIN)/med3d-train predict $(DEMO)/runs/hippocampus_volume $(DEMO)/raw/nnunet/Dataset004_Hippocampus/imagesTs \
		--out $(DEMO)/predictions/hippocampus_volume
	@echo "== 11. the report: what the stores hold and how training went, a static page (open it in a browser)"
	$(BIN)/med3d-prep report $(DEMO)/store $(DEMO)/report --runs $(DEMO)/runs/pretrain $(DEMO)/runs/liver \
		$(DEMO)/runs/hippocampus $(DEMO)/runs/hippocampus_volume
	@echo "== done: store in $(DEMO)/store, pretraining run $(DEMO)/runs/pretrain (weights"
	@echo "   $(DEMO)/runs/resnet_10_med3d.pth), liver run $(DEMO)/runs/liver (metrics in eval/val/), 'own data' runs"
	@echo "   $(DEMO)/runs/hippocampus (seg, eval/val/cases.csv) and $(DEMO)/runs/hippocampus_volume (classify,"
	@echo "   eval/test/predictions.csv); masks and class probabilities in $(DEMO)/predictions."
	@echo "   A dozen CPU steps on miniature data: the metrics show the machinery, not the paper."
	@echo "   Open $(DEMO)/report/index.html in a browser."

# Two worker processes (pytest-xdist), one thread each: the suite waits on dask clusters, subprocesses and servers as
# much as it computes. --durations lists the slowest tests, so a slow one added later is seen.
test: venv
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=15

bench: venv
	$(PY) -m pip install -q -e '.[bench]' $(TORCH)  # pinned: nnunetv2's deps would otherwise pull a CUDA torch
	$(PY) benchmarks/prep.py
	$(PY) benchmarks/inflate.py
	$(PY) benchmarks/checks.py
	$(PY) benchmarks/loader.py
	$(PY) benchmarks/loader_peers.py
	$(PY) benchmarks/loader_wait.py
	$(PY) benchmarks/scale_catalog.py
	$(PY) benchmarks/scale_build.py
	$(PY) benchmarks/train.py

clean:
	rm -rf $(VENV) $(DEMO)
