"""`python -m superres recover`: trainable checkpoints from ONNX model folders (float and int8), so that the
shipped networks, which exist only as ONNX files, can be fine-tuned."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from superres import DEFAULT_MODEL_DIR
from superres.training.data import Degradation
from superres.training.export import export_models, onnx_difference
from superres.training.models import Generator, UnetConfig, load_network
from superres.training.quantize import calibration_inputs
from superres.training.recover import _module_path, network_from_onnx

SMALL = UnetConfig(widen=0.25, nf=8, trunk_blocks=1, scale=2)


def trained_looking(seed: int, data: list[torch.Tensor]) -> Generator:
    """A small generator whose every parameter is away from its initial value and whose batch norms hold the
    statistics of `data` (as training leaves them), so that folding a batch norm, weight norm or spectral norm is
    not the identity by luck."""
    torch.manual_seed(seed)
    model = Generator(SMALL)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for m in norms:
            m.weight.uniform_(0.5, 1.5)
            m.momentum = None          # cumulative average over the passes below
        model.train()
        for x in data:
            model(x)
        for t in list(model.parameters()) + list(model.buffers()):   # what the files store exactly (float16)
            if t.is_floating_point():
                t.copy_(t.half().float())
    return model.eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory, sample_photos):
    """One x2 network exported float and int8, with the calibration crops."""
    out = tmp_path_factory.mktemp("recover")
    calib = calibration_inputs([sample_photos], Degradation(scale=2), n=6, hr_size=128)
    model = trained_looking(0, [torch.from_numpy(np.concatenate(calib[i:i + 3])) for i in (0, 3)])
    export_models({2: {"faithful": model, "gan": model}}, out / "float")
    export_models({2: {"faithful": model, "gan": model}}, out / "int8", int8={2: {"faithful": calib, "gan": calib}})
    return model, [torch.from_numpy(x) for x in calib], out


def test_module_paths_from_onnx_node_names():
    assert _module_path("/unet/layers.0/layers.0.4/layers.0.4.0/convpath/convpath.0/convpath.0.0/Conv") == \
        "unet.layers.0.4.0.convpath.0.0"
    assert _module_path("/head.0/head.0.0/Conv") == "head.0.0"
    assert _module_path("/stem/stem.0/Conv") == "stem.0"


def test_float_file_gives_back_the_same_network(folders):
    """Batch norms folded into convs, weight norm and spectral norm evaluated: the recovered network computes what
    the exported one did (the file stores float16 weights: 1e-3 on [0, 1] outputs)."""
    model, calib, out = folders
    recovered = network_from_onnx(out / "float" / "x2_faithful.onnx", SMALL, calib)
    with torch.no_grad():
        for x in calib[:3]:
            assert (recovered(x) - model(x)).abs().max() < 2e-3
    assert onnx_difference(recovered, out / "float" / "x2_faithful.onnx", calib[:2]) < 1e-4


def test_int8_file_is_recovered_within_its_rounding(folders):
    """From the int8 file: 7-bit weights dequantised; the torch network differs from the ONNX file only by the
    activations' int8 rounding, about as much as the int8 file differs from the original float network."""
    model, calib, out = folders
    path = out / "int8" / "x2_faithful.onnx"
    recovered = network_from_onnx(path, SMALL, calib)
    budget = json.loads((out / "int8" / "model_card.json").read_text())["int8"]["mean_abs_error_vs_torch"]
    assert onnx_difference(recovered, path, calib[:4]) < 2 * budget["x2_faithful"] + 1e-3
    with torch.no_grad():
        assert np.mean([(recovered(x) - model(x)).abs().mean().item() for x in calib]) < 3 / 255


def test_training_mode_starts_near_the_shipped_network(folders):
    """The folded batch norms get running statistics measured on the calibration crops: a training-mode forward
    (batch statistics) is as close to the eval-mode one as the original network's is, and a fine-tuning step runs
    and changes the weights."""
    model, calib, out = folders
    recovered = network_from_onnx(out / "int8" / "x2_faithful.onnx", SMALL, calib)
    uncalibrated = network_from_onnx(out / "int8" / "x2_faithful.onnx", SMALL)   # m = 0, v = 1: far off
    x = torch.cat(calib[:3])

    def train_vs_eval(m):
        with torch.no_grad():
            a = m.eval()(x)
            return (m.train()(x) - a).abs().mean().item()
    original, near, far = train_vs_eval(model), train_vs_eval(recovered), train_vs_eval(uncalibrated)
    assert near < 1.5 * original + 2e-3 and near < far
    before = recovered.head[0][0].weight.detach().clone()
    opt = torch.optim.Adam(recovered.parameters(), 1e-3)
    loss = (recovered(x) - torch.nn.functional.interpolate(x, scale_factor=2)).abs().mean()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, recovered.head[0][0].weight)


def test_recover_the_shipped_model_folder(tmp_path, sample_photos):
    """The CLI on the shipped folder: a load_network checkpoint per network, each within the int8 budget of its ONNX
    file on real photos, and a record of the errors."""
    done = subprocess.run([sys.executable, "-m", "superres", "recover", "-o", str(tmp_path), "--data",
                           str(sample_photos)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    card = json.loads((DEFAULT_MODEL_DIR / "model_card.json").read_text())
    record = json.loads((tmp_path / "recovered.json").read_text())
    names = {f"x{s}_{kind}.pt" for s, kinds in card["networks"].items() for kind in kinds}
    assert set(record["mean_abs_error_vs_onnx"]) == names
    assert all(e < 0.004 for e in record["mean_abs_error_vs_onnx"].values())   # measured: 0.0009-0.0017
    model = load_network(tmp_path / "x4_faithful.pt")
    assert model.cfg.to_dict() == card["architecture"]["x4"]


@pytest.mark.slow
def test_fine_tune_a_recovered_network_on_the_real_world_chain_and_add_it(folders, tmp_path, sample_photos):
    """The path the shipped x4 real-world networks took: recover a model folder's networks, fine-tune them on the
    real-world chain (`train --init ... --degradation real`, stage 1), add them to the folder (`export --into
    --real-faithful-run / --real-gan-run`); the Enhancer then uses them for "real" inputs only."""
    import shutil

    from superres.runtime.inference import Enhancer
    from superres.training.recover import recover
    from superres.training.train import TrainConfig, train
    _, _, out = folders
    folder = tmp_path / "model"
    shutil.copytree(out / "int8", folder)
    errors = recover(folder, tmp_path / "recovered", data=str(sample_photos), n_calibration=4)
    assert set(errors) == {"x2_faithful.pt", "x2_gan.pt"}
    runs = {}
    for kind in ("faithful", "gan"):
        cfg = TrainConfig(data=str(sample_photos), valid=str(sample_photos), run_dir=str(tmp_path / f"real_{kind}"),
                          scale=2, generator=SMALL, hr_size=64, bs=2, repeats=2, epochs_gen=1, loss="weightfree",
                          degradation="real", clean_prob=0.1, init=str(tmp_path / "recovered" / f"x2_{kind}.pt"))
        train(cfg, stages=("generator",))
        runs[kind] = cfg.run_dir
    done = subprocess.run([sys.executable, "-m", "superres", "export", "--into", str(folder), "--real-faithful-run",
                           runs["faithful"], "--real-gan-run", runs["gan"], "--int8", str(sample_photos)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    card = json.loads((folder / "model_card.json").read_text())
    assert card["networks"]["2"]["faithful_real"] == "x2_faithful_real.onnx"
    assert card["networks"]["2"]["gan_real"] == "x2_gan_real.onnx"
    assert card["real_faithful_networks"]["x2"]["init"].endswith("x2_faithful.pt")
    assert card["real_networks"]["x2"]["checkpoint"] == "generator_faithful.pt"   # a stage-1 fine-tune of the GAN
    enhancer = Enhancer(folder, threads=1)
    files = {enhancer._files[net].name for _, net in enhancer.networks(2, 0.5, "real")}
    assert files == {"x2_faithful_real.onnx", "x2_gan_real.onnx"}
    assert {enhancer._files[net].name for _, net in enhancer.networks(2, 0.5)} == {"x2_faithful.onnx", "x2_gan.onnx"}
