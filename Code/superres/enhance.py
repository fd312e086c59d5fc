"""python -m superres enhance: upscale an image or a folder of images (flags as in Real-ESRGAN's inference script).

    python -m superres enhance -i face.jpg -o results            # -> results/face.png (x4)
    python -m superres enhance -i photos/ -o out -s 2 --suffix x2  # -> out/<name>_x2.png for each image

It always runs the model; without one it stops with a clear error (it never falls back to plain resizing).
Exit code: 0 if every image was written, 1 if some failed (each is reported and skipped), 2 on setup errors.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .imaging import EXTENSIONS, ImageError, load_image, save
from .inference import DEFAULT_TILE_PAD, Enhancer, ModelError

OUT_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "tif": "TIFF", "tiff": "TIFF",
               "bmp": "BMP"}


def add_arguments(p):
    p.add_argument("-i", "--input", required=True, help="an image file or a folder of images")
    p.add_argument("-o", "--output", default="results", help="output folder (default: results)")
    p.add_argument("-s", "--outscale", "--scale", dest="scale", type=int, choices=[2, 4], default=4,
                   help="upscaling factor (default: 4)")
    p.add_argument("--strength", type=float, default=None,
                   help="0 = faithful .. 1 = sharp (GAN); default: the model card's default_strength")
    p.add_argument("-t", "--tile", type=int, default=None,
                   help="tile size in input pixels (default: automatic, bounded memory; 0 = whole image)")
    p.add_argument("--tile-pad", type=int, default=DEFAULT_TILE_PAD, help="context around each tile (default: 32)")
    p.add_argument("--suffix", default="", help="added to output names: face.jpg -> face_<suffix>.png")
    p.add_argument("--ext", default="auto", choices=["auto", *OUT_FORMATS],
                   help="output format; auto = PNG (lossless, keeps alpha and the ICC profile)")
    p.add_argument("--model-dir", default=None, help="model folder (default: the models shipped in superres/default_model)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default: all cores)")


def list_inputs(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
    return [path]


def output_path(src: Path, outdir: Path, suffix: str, ext: str) -> Path:
    ext = "png" if ext == "auto" else ext
    stem = f"{src.stem}_{suffix}" if suffix else src.stem
    return outdir / f"{stem}.{ext}"


def run(args) -> int:
    src = Path(args.input)
    if not src.exists():
        print(f"error: {src} does not exist", file=sys.stderr)
        return 2
    if args.strength is not None and not 0.0 <= args.strength <= 1.0:
        print(f"error: --strength must be between 0 and 1, got {args.strength}", file=sys.stderr)
        return 2
    inputs = list_inputs(src)
    if not inputs:
        print(f"error: no images ({', '.join(EXTENSIONS)}) in {src}", file=sys.stderr)
        return 2
    try:
        enhancer = Enhancer(args.model_dir, threads=args.threads)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    outdir = Path(args.output)
    outdir.mkdir(parents=True, exist_ok=True)
    fmt = OUT_FORMATS.get(args.ext, "PNG")

    from tqdm import tqdm
    failed = 0
    bar = tqdm(inputs, unit="img", disable=len(inputs) == 1)
    for path in bar:
        bar.set_postfix_str(path.name)
        dest = output_path(path, outdir, args.suffix, args.ext)
        try:
            if dest.resolve() == path.resolve():
                raise ImageError("the output would overwrite the input; use --suffix or another -o")
            img = load_image(path)
            out = enhancer.enhance(img, scale=args.scale, strength=args.strength, tile=args.tile,
                                   tile_pad=args.tile_pad)
            save(out, dest, fmt)
        except (ImageError, OSError) as e:
            failed += 1
            tqdm.write(f"skipped {path}: {e}", file=sys.stderr)
            continue
        if len(inputs) == 1:
            print(f"{path} ({img.width}x{img.height}) -> {dest} ({out.width}x{out.height})")
    if len(inputs) > 1:
        print(f"wrote {len(inputs) - failed} of {len(inputs)} images to {outdir}")
    return 1 if failed else 0
