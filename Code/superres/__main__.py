"""Command line: python -m superres {train,export,recover,enhance,evaluate,serve,worker,report} --help

Each verb lives in its own module, which defines `add_arguments(parser)` and `run(args)`;
modules are imported only when their verb runs, so `enhance` and `serve` never import torch.
"""
import argparse
import importlib
import sys

VERBS = {
    "train": ("superres.training.train", "train the generator, critic, GAN and up-sampler (fastai)"),
    "export": ("superres.training.export", "export trained checkpoints to ONNX + model card"),
    "recover": ("superres.training.recover", "trainable checkpoints from a model folder's ONNX files"),
    "enhance": ("superres.runtime.enhance", "upscale an image or a folder of images"),
    "evaluate": ("superres.evaluation.evaluate", "score the models beside bicubic, Lanczos and OpenCV peers"),
    "serve": ("superres.runtime.serve", "start the web app (Starlette + uvicorn)"),
    "worker": ("superres.runtime.worker", "run jobs from the Redis queue (REDIS_URL) for `serve` web processes"),
    "report": ("superres.writeup.report", "rebuild the report, the presentations and their figures and tables"),
}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m superres", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="{" + ",".join(VERBS) + "}")
    for verb, (module_name, help_text) in VERBS.items():
        p = sub.add_parser(verb, help=help_text, description=help_text)
        p.set_defaults(module_name=module_name)
        # Only the chosen verb's module is imported (its options are added below).
    argv = sys.argv[1:] if argv is None else argv
    verb = next((a for a in argv if a in VERBS), None)
    if verb is not None:
        module = importlib.import_module(VERBS[verb][0])
        module.add_arguments(sub.choices[verb])
    args = parser.parse_args(argv)
    return importlib.import_module(args.module_name).run(args)


if __name__ == "__main__":
    sys.exit(main())
