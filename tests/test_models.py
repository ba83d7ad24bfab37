import pytest
import torch

from ntclass.errors import NtclassError
from ntclass.models import architectures, build_model


def test_registry_lists_both_architectures():
    assert {"vgg3d", "resnet3d"} <= set(architectures())


@pytest.mark.parametrize("architecture, params, shape", [
    ("vgg3d", {"fmaps": 4, "fc_size": 32}, (16, 160, 160)),  # FAFB geometry, narrow
    ("vgg3d", {"fmaps": 4, "downsample_factors": [[1, 2, 2], [2, 2, 2]], "fc_size": 16},
     (8, 32, 32)),
    ("resnet3d", {"depth": 18, "fmaps": 4}, (8, 48, 48)),
    ("resnet3d", {"depth": 34, "fmaps": 4}, (16, 64, 64)),
])
def test_output_shape(architecture, params, shape):
    model = build_model(architecture, shape, 7, **params)
    with torch.no_grad():
        out = model.eval()(torch.zeros(3, 1, *shape))
    assert out.shape == (3, 7)


def test_vgg3d_fafb_parameter_count():
    """Synister's FAFB VGG (fmaps 12, fc 4096): ~96 % of parameters in the first FC layer."""
    model = build_model("vgg3d", (16, 160, 160), 6, fmaps=12)
    total = sum(p.numel() for p in model.parameters())
    first_fc = sum(p.numel() for p in model.classifier[0].parameters())
    assert 0.9 < first_fc / total < 0.97


def test_bad_model_settings():
    with pytest.raises(NtclassError, match="architecture 'unet' is unknown"):
        build_model("unet", (8, 32, 32), 3)
    with pytest.raises(NtclassError, match="too small"):
        build_model("vgg3d", (2, 8, 8), 3)
    with pytest.raises(NtclassError, match="unexpected keyword"):
        build_model("vgg3d", (8, 32, 32), 3, fmapz=3)
