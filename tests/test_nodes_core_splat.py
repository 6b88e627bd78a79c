"""Core ComfyUI SPLAT interop: on a ComfyUI with ``comfy_api.latest.Types.SPLAT`` our splat outputs are core SPLAT
objects on ``"SPLAT"`` sockets and our savers take core splats; without it (v0.8.0, CI) our own type is used.

The core class is stood in for by a class with core's constructor and fields (``comfy_api/latest/_util/
geometry_types.py``: positions, scales, rotations, opacities, sh, counts); the real-ComfyUI run is
scripts/comfyui_e2e.py against a ComfyUI that has the type."""

import sys
from pathlib import Path

import _fake_comfy
import pytest
import torch
from conftest import REPO_ROOT

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

TINY = "tiny-anysplat (untrained, tests only)"


class CoreSPLAT:
    """Core's SPLAT contract: (B, N, ...) zero-padded tensors, ``counts`` (B,) or None."""

    def __init__(self, positions, scales, rotations, opacities, sh, counts=None):
        self.positions, self.scales, self.rotations = positions, scales, rotations
        self.opacities, self.sh, self.counts = opacities, sh, counts


def _gaussians(n, seed, sh_bases=4):
    from vist3a import Gaussians

    g = torch.Generator().manual_seed(seed)
    return Gaussians(torch.randn(n, 3, generator=g), torch.rand(n, 3, generator=g) + 0.05,
                     torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
                     torch.rand(n, generator=g), torch.randn(n, sh_bases, 3, generator=g))


@pytest.fixture
def core_comfy(tmp_path):
    """Fake ComfyUI modules + a ``comfy_api.latest`` exposing ``Types.SPLAT``; the node modules are re-imported
    so their socket types see it, and re-imported again afterwards without it."""
    state = _fake_comfy.install(tmp_path)
    _fake_comfy.install_core_splat(CoreSPLAT)
    import nodes

    yield state, nodes.NODE_CLASS_MAPPINGS
    _fake_comfy.uninstall_core_splat()
    _fake_comfy.uninstall()


def test_socket_types_follow_the_running_comfyui():
    from nodes.splat_types import OWN_TYPE, socket_types

    assert socket_types(None) == (OWN_TYPE, OWN_TYPE) == ("VIST3A_SPLATS", "VIST3A_SPLATS")
    out, inp = socket_types(CoreSPLAT)
    assert out == "SPLAT"
    # ComfyUI links an output to an input when their comma-separated type sets overlap: core splat nodes' "SPLAT"
    # outputs reach our savers and links saved on an older ComfyUI ("VIST3A_SPLATS") still validate.
    assert {"SPLAT", "VIST3A_SPLATS"} == set(inp.split(","))


def test_without_core_type_our_container_is_used(tmp_path):
    _fake_comfy.install(tmp_path)
    try:
        _fake_comfy.reload_nodes()
        import nodes.decoding as dec
        import nodes.splat_types as st

        assert st.CORE_SPLAT is None and dec.DecodeToSplats.RETURN_TYPES[0] == "VIST3A_SPLATS"
        assert dec.SaveSplatPLY.INPUT_TYPES()["required"]["splats"][0] == "VIST3A_SPLATS"
        assert isinstance(st.make_splats([_gaussians(5, 0)]), st.SplatBatch)
    finally:
        _fake_comfy.uninstall()


def test_core_splat_round_trip_is_lossless_with_ragged_counts():
    from nodes.splat_types import make_splats, to_gaussians

    items = [_gaussians(7, 1), _gaussians(3, 2)]
    splat = make_splats(items, cameras=["c0", "c1"], untrained=True, core=CoreSPLAT)
    assert isinstance(splat, CoreSPLAT)
    assert splat.positions.shape == (2, 7, 3) and splat.scales.shape == (2, 7, 3)
    assert splat.rotations.shape == (2, 7, 4) and splat.opacities.shape == (2, 7, 1) and splat.sh.shape == (2, 7, 4, 3)
    assert splat.counts.tolist() == [7, 3] and splat.vist3a_cameras == ["c0", "c1"]
    back, untrained = to_gaussians("Node", splat)
    assert untrained is True and [len(g) for g in back] == [7, 3]
    for a, b in zip(items, back):
        for f in ("means", "scales", "rotations", "opacities", "sh"):
            torch.testing.assert_close(getattr(a, f), getattr(b, f), rtol=0, atol=1e-7)
    uniform = make_splats([_gaussians(4, 3), _gaussians(4, 4)], core=CoreSPLAT)
    assert uniform.counts is None  # core leaves counts None when all rows are real


def test_splats_made_by_core_nodes_are_accepted_and_bad_ones_named():
    from nodes.splat_types import to_gaussians

    n = 6
    core_made = CoreSPLAT(torch.randn(1, n, 3), torch.rand(1, n, 3) + 0.1,
                          torch.randn(1, n, 4) * 3,  # not unit length (TransformSplat drift): same rotation
                          torch.rand(1, n, 1), torch.randn(1, n, 1, 3))
    (g,), untrained = to_gaussians("SaveSplatPLY", core_made)
    assert len(g) == n and not untrained
    torch.testing.assert_close(g.rotations.norm(dim=-1), torch.ones(n))
    with pytest.raises(ValueError, match="SaveSplatPLY: splats must come from .* without positions"):
        to_gaussians("SaveSplatPLY", {"samples": torch.zeros(1)})
    logit = CoreSPLAT(torch.randn(1, n, 3), torch.rand(1, n, 3) + 0.1, torch.randn(1, n, 4),
                      torch.randn(1, n, 1) * 5, torch.randn(1, n, 1, 3))  # logits, not opacities
    with pytest.raises(ValueError, match="SaveSplatPLY: the SPLAT input does not hold valid Gaussians.*opacities"):
        to_gaussians("SaveSplatPLY", logit)


def test_decoder_nodes_speak_core_splat(core_comfy, single_thread):
    from vist3a.io import read_gaussians_ply

    state, mappings = core_comfy
    assert mappings["DecodeToSplats"].RETURN_TYPES[0] == "SPLAT"
    assert mappings["VIST3AImagesTo3D"].RETURN_TYPES[0] == "SPLAT"
    for saver in ("SaveSplatPLY", "VIST3APreviewSplats"):
        assert set(mappings[saver].INPUT_TYPES()["required"]["splats"][0].split(",")) == {"SPLAT", "VIST3A_SPLATS"}
    dec, = mappings["LoadStitchedDecoder"]().load(TINY, "fp32", "cpu")
    latent, = mappings["WanVIST3ASampler"]().sample("none (base Wan)", 1.0, 0, 2, 5.0, 9, 64, 64, 5.0, "tiny")
    splat, cameras, _frames = mappings["DecodeToSplats"]().decode(dec, latent)
    assert isinstance(splat, CoreSPLAT) and splat.positions.dim() == 3 and splat.opacities.shape[-1] == 1
    assert float(splat.opacities.min()) >= 0 and float(splat.opacities.max()) <= 1
    torch.testing.assert_close(splat.rotations.norm(dim=-1), torch.ones(splat.rotations.shape[:2]))
    assert splat.vist3a_cameras is cameras or splat.vist3a_cameras == cameras
    out = mappings["SaveSplatPLY"]().save(splat, "vist3a/core", False)
    e, = out["ui"]["vist3a_splats"]
    g = read_gaussians_ply(Path(state.root) / "output" / e["subfolder"] / e["filename"])
    torch.testing.assert_close(g.means, splat.positions[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g.opacities, splat.opacities[0, :, 0], rtol=1e-5, atol=1e-5)
    images = torch.rand(9, 64, 64, 3)
    splat2, _points, _cams, _latent = mappings["VIST3AImagesTo3D"]().reconstruct(dec, images, 9, 64, 64)
    assert isinstance(splat2, CoreSPLAT) and splat2.positions.shape[0] == 1
