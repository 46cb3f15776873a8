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
	$(PY) -m pip install -q -e '.[test]'
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
	@echo "      the LiTS validation scans (MSD Task03_Liver holds them under other names) and the hippocampus"
	@echo "      scans the seg run is measured on (val) and predicts (imagesTs = test): the 3DSeg-8 store holds"
	@echo "      the same scans as MSD Task04_Hippocampus"
	$(BIN)/med3d-train pretrain $(DEMO)/store --out $(DEMO)/runs/pretrain --depth 10 --steps 12 --batch 2 \
		--patch 32 --device cpu --workers 0 --val-every 12 --ckpt-every 6 --exclude $(DEMO)/lits_store:val \
		--exclude $(DEMO)/hippo_store:val --exclude $(DEMO)/hippo_store:test --no-progress
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
		--decoder unet --steps 12 --batch 2 --patch 32 --device cpu --workers 0 --val-every 6 --ckpt-every 6 \
		--no-progress
	$(BIN)/med3d-train evaluate $(DEMO)/runs/hippocampus $(DEMO)/hippo_store --no-progress
	$(BIN)/med3d-train predict $(DEMO)/runs/hippocampus $(DEMO)/raw/nnunet/Dataset004_Hippocampus/imagesTs \
		--out $(DEMO)/predictions/hippocampus
	@echo "== 10. the report: what the stores hold and how training went, a static page (open it in a browser)"
	$(BIN)/med3d-prep report $(DEMO)/store $(DEMO)/report --runs $(DEMO)/runs/pretrain $(DEMO)/runs/liver \
		$(DEMO)/runs/hippocampus
	@echo "== done: store in $(DEMO)/store, pretraining run $(DEMO)/runs/pretrain (weights"
	@echo "   $(DEMO)/runs/resnet_10_med3d.pth), liver run $(DEMO)/runs/liver (metrics in eval/val/), hippocampus"
	@echo "   seg run $(DEMO)/runs/hippocampus (eval/val/cases.csv), masks in $(DEMO)/predictions."
	@echo "   A dozen CPU steps on miniature data: the Dice shows the machinery, not the paper."
	@echo "   Open $(DEMO)/report/index.html in a browser."

test: venv
	$(PY) -m pytest -q

bench: venv
	$(PY) -m pip install -q -e '.[bench]' $(TORCH)  # pinned: nnunetv2's deps would otherwise pull a CUDA torch
	$(PY) benchmarks/prep.py
	$(PY) benchmarks/checks.py
	$(PY) benchmarks/loader.py
	$(PY) benchmarks/train.py

clean:
	rm -rf $(VENV) $(DEMO)
