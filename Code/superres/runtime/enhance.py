"""python -m superres enhance: upscale an image or a folder of images (flags as in Real-ESRGAN's inference script).

    python -m superres enhance -i face.jpg -o results            # -> results/face.png (x4)
    python -m superres enhance -i photos/ -o out -s 2 --suffix x2  # -> out/<name>_x2.png for each image

It always runs the model; without one it stops with a clear error (it never falls back to plain resizing).
Exit code: 0 if every image was written, 1 if some failed (each is reported and skipped), 2 on setup errors
(one line, before any image is enhanced), 130 on Ctrl-C.

Output names never collide and never replace an input: `face.jpg` -> `face.png`, but where two inputs would
share that name (`x.jpg` and `x.png`) or it is an input itself (`-o` = the input folder), the whole source name
is kept: `x.jpg.png`, `x.png.png`. Existing files are replaced only with --overwrite. Every file is written
atomically (a temporary name, then a rename), so an interrupted run leaves no broken image.
"""
from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path

from superres.runtime.imaging import EXTENSIONS, ImageError, load_image, save, save_options
from superres.runtime.inference import DEFAULT_TILE_PAD, Enhancer, ModelError
from superres.runtime.model_folder import has_compressed_networks

OUT_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "tif": "TIFF", "tiff": "TIFF",
               "bmp": "BMP"}


def add_arguments(p):
    p.add_argument("-i", "--input", required=True, help="an image file or a folder of images")
    p.add_argument("-o", "--output", default="results", help="output folder (default: results)")
    p.add_argument("-s", "--outscale", "--scale", dest="scale", type=int, choices=[2, 4], default=4,
                   help="upscaling factor (default: 4)")
    p.add_argument("--strength", type=float, default=None,
                   help="0 = faithful .. 1 = sharp (GAN); default: the model card's default_strength")
    p.add_argument("--jpeg", default="auto", choices=["auto", "yes", "no"],
                   help="how to read the input, where the model has networks for compressed inputs: auto = from its "
                        "pixels (clean, JPEG-compressed and sharp, or real-world: soft, or noisy and lightly "
                        "compressed), yes = as JPEG-compressed (the JPEG-trained faithful network), no = as clean "
                        "(default: auto)")
    p.add_argument("-t", "--tile", type=int, default=None,
                   help="tile size in input pixels (default: automatic, bounded memory; 0 = whole image)")
    p.add_argument("--tile-pad", type=int, default=DEFAULT_TILE_PAD, help="context around each tile (default: 32)")
    p.add_argument("--suffix", default="", help="added to output names: face.jpg -> face_<suffix>.png")
    p.add_argument("--ext", default="auto", choices=["auto", *OUT_FORMATS],
                   help="output format; auto = PNG (lossless, keeps alpha and the ICC profile)")
    p.add_argument("-q", "--quality", type=int, default=None,
                   help="1-100 for jpg (default 95) and webp (default: lossless)")
    p.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    p.add_argument("--model-dir", default=None,
                   help="model folder (default: the models shipped in superres/default_model)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default: all cores)")


def list_inputs(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
    return [path]


def output_paths(inputs: list[Path], outdir: Path, suffix: str, ext: str) -> dict[Path, Path]:
    """Where each input goes: <stem>[_<suffix>].<ext>, or <name>[_<suffix>].<ext> where that would collide
    with another input's output or with an input file. Raises ValueError if even that collides."""
    ext = "png" if ext == "auto" else ext
    tail = f"_{suffix}" if suffix else ""
    plain = {src: outdir / f"{src.stem}{tail}.{ext}" for src in inputs}
    sources = {src.resolve() for src in inputs}
    counts = Counter(plain.values())
    out = {src: dest if counts[dest] == 1 and dest.resolve() not in sources else outdir / f"{src.name}{tail}.{ext}"
           for src, dest in plain.items()}
    clash = next((d for d in out.values() if d.resolve() in sources), None) or next(
        (d for d, n in Counter(out.values()).items() if n > 1), None)
    if clash:
        raise ValueError(f"cannot name the outputs without replacing an input ({clash}); choose another -o or --suffix")
    return out


def run(args) -> int:
    def fail(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2
    src = Path(args.input)
    if not src.exists():
        return fail(f"{src} does not exist")
    if args.strength is not None and not 0.0 <= args.strength <= 1.0:
        return fail(f"--strength must be between 0 and 1, got {args.strength}")
    if args.quality is not None and not 1 <= args.quality <= 100:
        return fail(f"--quality must be between 1 and 100, got {args.quality}")
    inputs = list_inputs(src)
    if not inputs:
        return fail(f"no images ({', '.join(EXTENSIONS)}) in {src}")
    outdir = Path(args.output)
    try:
        dests = output_paths(inputs, outdir, args.suffix, args.ext)
    except ValueError as e:
        return fail(str(e))
    existing = [d for d in dests.values() if d.exists()]
    if existing and not args.overwrite:
        return fail(f"{len(existing)} output file(s) already exist ({existing[0]}"
                    f"{', ...' if len(existing) > 1 else ''}); pass --overwrite to replace them or choose another -o")
    try:                        # a folder we cannot write to is found now, not after all the work
        outdir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=outdir).close()
    except OSError as e:
        return fail(f"cannot write to the output folder {outdir} ({e.strerror or e})")
    try:
        enhancer = Enhancer(args.model_dir, threads=args.threads)
    except ModelError as e:
        return fail(str(e))
    if args.jpeg == "yes" and not has_compressed_networks(enhancer.card, args.scale):
        return fail(f"--jpeg yes: the model in {enhancer.model_dir} has no network for compressed inputs "
                    f"at x{args.scale}")
    fmt = OUT_FORMATS.get(args.ext, "PNG")
    options = save_options(fmt, args.quality)

    from tqdm import tqdm
    failed = written = 0
    bar = tqdm(inputs, unit="img", disable=len(inputs) == 1)
    try:
        for path in bar:
            bar.set_postfix_str(path.name)
            dest = dests[path]
            try:
                img = load_image(path)
                out = enhancer.enhance(img, scale=args.scale, strength=args.strength, tile=args.tile,
                                       tile_pad=args.tile_pad, jpeg={"auto": None, "yes": True, "no": False}[args.jpeg])
                save(out, dest, fmt, **options)
            except (ImageError, OSError) as e:
                failed += 1
                tqdm.write(f"skipped {path}: {e}", file=sys.stderr)
                continue
            written += 1
            if len(inputs) == 1:
                print(f"{path} ({img.width}x{img.height}) -> {dest} ({out.width}x{out.height})")
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted: wrote {written} of {len(inputs)} images to {outdir} (no partial file left)",
              file=sys.stderr)
        return 130
    if len(inputs) > 1:
        print(f"wrote {written} of {len(inputs)} images to {outdir}")
    return 1 if failed else 0
