"""One command for a GPU node: JPEG precomputed raw, decoded by each decoder, end to end.

On a synthetic FAFB-like volume (precomputed JPEG 64^3, sharded, EM-like voxels, synapses
at FAFB density; `predict_feed.py` writes it), read from the local disk and from a local
HTTP server with byte ranges, it prints in one run:
  - JPEG chunks/s per decoder: TensorStore (read + decode, `--threads` threads) and
    nvImageCodec as the reader uses it (read the encoded bytes, then one batched decode);
    on a GPU also each nvImageCodec backend alone (decode only: hardware engines, CUDA,
    hybrid);
  - synapses/s of the data path alone (the model replaced by zeros) per decoder;
  - synapses/s of the model alone (forward pass on cubes already on the device);
  - synapses/s end to end (`predict_shard`, one worker) per decoder, local and over HTTP,
    and the share of the time the GPU computes the forward pass (end to end / model
    alone; n/a on the CPU). On a GPU also the model alone with channels-last 3D and with
    cudnn.benchmark, which prediction does not use until these show a gain.
Rates are once running: each job's fixed cost (the same job on 64 synapses) taken out.

  .venv/bin/python benchmarks/gpu_node.py                         # FAFB VGG, 16x160x160
  .venv/bin/python benchmarks/gpu_node.py --device cpu --model demo --volume-shape 64 512 512
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from predict_feed import (  # noqa: E402 (the benchmarks folder is no package)
    CLASSES,
    FAFB_DENSITY,
    VOXEL,
    serve_http,
    target,
    touched_chunks,
    write_volume,
)
from predict_throughput import model_settings, write_model  # noqa: E402

from ntclass import stores  # noqa: E402
from ntclass.intensity import intensity_of, to_network  # noqa: E402
from ntclass.models import build_model  # noqa: E402
from ntclass.models.modelfile import pick_device  # noqa: E402
from ntclass.predict.cubes import cpu_count, cube_reader  # noqa: E402
from ntclass.predict.jpeg import JpegChunks, nvimgcodec_available  # noqa: E402
from ntclass.predict.shard import BlockPredictor, PredictConfig, predict_shard  # noqa: E402
from ntclass.settings import Prediction  # noqa: E402
from ntclass.volumes import open_raw, open_tensorstore  # noqa: E402

UINT8 = intensity_of("uint8", None, "the benchmark volume")
DECODERS = ("tensorstore", "nvimgcodec")


class DataPathOnly(BlockPredictor):
    """`BlockPredictor` with the model replaced by zeros: reads, decodes, cuts and maps
    the cubes to the network's input on the device, as a shard job does."""

    input_shape: list[int] = []  # set by main (one worker: blocks run in this process)

    def model(self):
        if self._model is None:
            self._device = pick_device(self.cfg.settings.device)
            self._record = {"input_shape": self.input_shape, "voxel_size": list(VOXEL),
                            "intensity": {"uint8": [0.0, 255.0]}}
            self._threads = max(1, cpu_count() // self.cfg.settings.workers)
            self._model = "none"
        return self._model

    def _run(self, model, batch, intensity) -> np.ndarray:
        x = to_network(batch.to(self._device, non_blocking=True), intensity)
        x.sum().item()  # wait for the device
        return np.zeros((len(batch), len(self.cfg.classes)), np.float32)


def chunk_rates(container: str, rows, device: str, threads: int) -> dict[str, float]:
    """JPEG chunks/s of each decoder over every chunk the synapses' cubes touch."""
    volume = open_raw(container, "s0")
    context = stores.context(threads, 0)
    store = open_tensorstore(volume, context)
    chunk = np.asarray(store.chunk_layout.read_chunk.shape)
    keys = touched_chunks(store, rows)
    rates = {}
    start = time.perf_counter()
    for first in range(0, len(keys), 512):  # as the reader: a few hundred in flight
        futures = []
        for key in keys[first:first + 512]:
            a = np.asarray(key) * chunk
            b = np.minimum(a + chunk, store.shape)
            futures.append(store[a[0]:b[0], a[1]:b[1], a[2]:b[2]].read())
        for f in futures:
            f.result()
    rates["tensorstore (read + decode)"] = len(keys) / (time.perf_counter() - start)
    if not nvimgcodec_available():
        return rates
    where = "cpu-only" if device == "cpu" else device
    jpeg = JpegChunks(volume, context, device, threads)
    jpeg.submit(keys[:8]).result()  # the decoder's start-up is not the rate
    start = time.perf_counter()
    for first in range(0, len(keys), 512):
        jpeg.submit(keys[first:first + 512]).result()
    rates[f"nvimgcodec {where} (read + decode)"] = len(keys) / (time.perf_counter() - start)
    if device.startswith("cuda"):
        rates.update(backend_rates(jpeg, keys, threads))
    return rates


def backend_rates(jpeg: JpegChunks, keys: list, threads: int) -> dict[str, float]:
    """Decode-only chunks/s of each nvImageCodec backend on the GPU (n/a: unavailable)."""
    from nvidia import nvimgcodec

    encoded = [nvimgcodec.CodeStream(bytes(jpeg.kvstore.read(jpeg.key(k)).result().value))
               for k in keys]
    params = nvimgcodec.DecodeParams(color_spec=nvimgcodec.ColorSpec.GRAY)
    index = int(jpeg.device.split(":")[1]) if ":" in jpeg.device else 0
    rates = {}
    for kind in ("HW_GPU_ONLY", "GPU_ONLY", "HYBRID_CPU_GPU"):
        name = f"nvimgcodec {kind} (decode only)"
        try:
            decoder = nvimgcodec.Decoder(device_id=index, max_num_cpu_threads=threads,
                                         backends=[nvimgcodec.Backend(
                                             getattr(nvimgcodec.BackendKind, kind))])
            decoder.decode(encoded[:8], params=params)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for first in range(0, len(encoded), 512):
                images = decoder.decode(encoded[first:first + 512], params=params)
                if any(i is None for i in images):
                    raise RuntimeError("some chunks were not decoded")
            torch.cuda.synchronize()
            rates[name] = len(encoded) / (time.perf_counter() - start)
        except Exception as e:  # a backend this GPU or this install lacks
            rates[name] = float("nan")
            print(f"  ({name}: {type(e).__name__}: {str(e)[:120]})")
    return rates


def forward_rate(params: dict, shape: list[int], device: str, batch: int, iterations: int,
                 channels_last: bool = False, cudnn_benchmark: bool = False) -> float:
    """Synapses/s of the forward pass alone, as `BlockPredictor._run` runs it."""
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.manual_seed(0)
    model = build_model("vgg3d", shape, len(CLASSES), **params).to(device).eval()
    memory = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory)
    cubes = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, device=device)
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=on_gpu):
        def step():
            x = to_network(cubes, UINT8).contiguous(memory_format=memory)
            return torch.softmax(model(x).float(), dim=1).cpu()
        for _ in range(3):
            step()
        start = time.perf_counter()
        for _ in range(iterations):
            step()
    torch.backends.cudnn.benchmark = False
    return iterations * batch / (time.perf_counter() - start)


def shard_rate(model: str, shard: Path, small: Path | None, n: int, settings: Prediction,
               work: Path, predictor=None, repeats: int = 1) -> float:
    """Synapses/s of a shard job once running (the job on 64 synapses, `small`, taken
    out; None: the whole job's rate)."""
    cfg = PredictConfig(classes=tuple(CLASSES), voxel_size=VOXEL, intensity_range=None,
                        settings=settings)
    times = {shard: [], small: []}
    for r in range(repeats):
        for path in (shard, small) if small is not None else (shard,):
            cube_reader.cache_clear()  # a fresh reader, as a new job has
            run = work / f"{path.stem}-{r}-{time.monotonic_ns()}"
            begin = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # daisy's summary of each run
                predict_shard(model, path, cfg, run / "work", run / "cache",
                              str(run / "out.parquet"), predictor=predictor)
            times[path].append(time.perf_counter() - begin)
    if small is None:
        return n / min(times[shard])
    return (n - 64) / max(1e-9, min(times[shard]) - min(times[small]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--model", choices=["fafb", "demo"], default="fafb",
                        help="fafb: Synister's FAFB VGG on 16x160x160; demo: the config's")
    parser.add_argument("--volume-shape", type=int, nargs=3, default=[192, 2048, 2048],
                        help="voxels z y x (default 0.8 GB)")
    parser.add_argument("--synapses", type=int, default=None,
                        help="default: FAFB density (1.9e-6 per voxel)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None,
                        help="decode threads (default: the cores)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--data-path-only", action="store_true",
                        help="chunks/s and the data path alone (on a CPU the FAFB model "
                             "would take hours)")
    parser.add_argument("--quick", action="store_true",
                        help="CI-sized: synapses/s of whole jobs (fixed cost not taken out)")
    args = parser.parse_args()
    device = pick_device(args.device)
    threads = args.threads or cpu_count()
    params, shape, _ = model_settings(args.model == "fafb")  # fafb: FAFB_VGG, 16x160x160
    DataPathOnly.input_shape = list(shape)
    volume_shape = tuple(args.volume_shape)
    n = args.synapses or int(round(np.prod(volume_shape) * FAFB_DENSITY))
    if n < (16 if args.quick else 128):
        sys.exit(f"{n} synapses are too few to take out the fixed cost; give --synapses")
    rng = np.random.default_rng(1)
    margin = np.array(VOXEL)
    locations = margin + rng.uniform(0, 1, (n, 3)) * (
        np.array(volume_shape) * VOXEL - 2 * margin)
    on_gpu = device.startswith("cuda")
    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if on_gpu else "")
          + f", {cpu_count()} cores, {threads} decode threads, torch {torch.__version__}")
    print(f"volume {volume_shape} voxels, precomputed JPEG 64^3 sharded; {n} synapses; "
          f"model {args.model} vgg3d on {list(shape)}, batch {args.batch_size}")
    if not nvimgcodec_available():
        print("nvImageCodec is not installed: its rows are missing (pip install '.[gpu]')")
    with tempfile.TemporaryDirectory(dir=HERE) as tmp:
        tmp = Path(tmp)
        begin = time.perf_counter()
        container, _, ratio = write_volume("jpeg", tmp, volume_shape, (64, 64, 64),
                                           tile=min(1024, *volume_shape[1:]))
        shard, small, rows = target(tmp, "jpeg", container, "s0", locations)
        model = tmp / "model.pt"
        write_model(model, params, list(shape), list(CLASSES))
        print(f"written in {time.perf_counter() - begin:.0f} s (JPEG compression {ratio:.1f}x)")
        server, url = (None, None) if args.no_http else serve_http(tmp)
        try:
            table = measure(args, device, threads, container, shard, small, rows, n, model,
                            params, shape, url, tmp, locations)
        finally:
            if server is not None:
                server.terminate()
                server.wait()
    print_table(table, on_gpu)
    if args.quick:
        print("  (--quick: whole jobs, their fixed cost included)")


def measure(args, device, threads, container, shard, small, rows, n, model, params, shape,
            url, tmp, locations) -> list[tuple[str, str, float]]:
    table = [("JPEG chunks/s", name, rate)
             for name, rate in chunk_rates(container, rows, device, threads).items()]
    decoders = [d for d in DECODERS if d == "tensorstore" or nvimgcodec_available()]
    os.environ["OMP_NUM_THREADS"] = str(threads)

    def settings(decoder: str) -> Prediction:
        return Prediction(device=device, mixed_precision=True, rows_per_block=1024,
                          batch_size=args.batch_size, workers=1, jpeg_decoder=decoder)

    def fixed(path: Path) -> Path | None:
        return None if args.quick else path

    for decoder in decoders:
        rate = shard_rate(str(model), shard, fixed(small), n, settings(decoder), tmp / "runs",
                          DataPathOnly, args.repeats)
        table.append(("data path alone, synapses/s", decoder, rate))
    if args.data_path_only:
        return table
    iterations = max(3, min(50, n // args.batch_size))
    alone = forward_rate(params, list(shape), device, args.batch_size, iterations)
    table.append(("model alone, synapses/s", "forward pass", alone))
    if device.startswith("cuda"):
        for name, flags in (("channels-last 3D", {"channels_last": True}),
                            ("cudnn.benchmark", {"cudnn_benchmark": True})):
            table.append(("model alone, synapses/s", name,
                          forward_rate(params, list(shape), device, args.batch_size,
                                       iterations, **flags)))
    places = [("local", shard, small)]
    if url:
        remote = f"precomputed://{url}/{Path(container).name}"
        shard_r, small_r, _ = target(tmp, "jpeg-http", remote, "s0", locations)
        places.append(("http", shard_r, small_r))
    for where, s, sm in places:
        for decoder in decoders:
            rate = shard_rate(str(model), s, fixed(sm), n, settings(decoder), tmp / "runs",
                              None, args.repeats)
            table.append((f"end to end ({where}), synapses/s", decoder, rate))
            table.append((f"GPU busy ({where})", decoder, rate / alone))
    return table


def print_table(table: list[tuple[str, str, float]], on_gpu: bool) -> None:
    width = max(len(f"{w}: {n}") for w, n, _ in table)
    print()
    for what, name, value in table:
        label = f"{what}: {name}"
        if what.startswith("GPU busy"):
            shown = f"{100 * value:9.0f} %" if on_gpu else "      n/a"
        else:
            shown = f"{value:9.0f}" if np.isfinite(value) else "      n/a"
        print(f"  {label:<{width}}  {shown}")


if __name__ == "__main__":
    main()
