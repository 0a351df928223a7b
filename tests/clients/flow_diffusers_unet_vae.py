"""diffusers: a tiny UNet2DModel and a tiny AutoencoderKL, saved and loaded.

save_pretrained (single file, and sharded with max_shard_size), from_pretrained (the default
low_cpu_mem_usage path through accelerate, and low_cpu_mem_usage=False), a bfloat16 load, and
a forward pass of each loaded model; and the request bodies diffusers' remote VAE
encode/decode would send (prepare_encode / prepare_decode, built offline), which it makes with
safetensors.torch._to_ndarray.
"""

import torch
from diffusers import AutoencoderKL, UNet2DModel
from diffusers.utils.remote_utils import prepare_decode, prepare_encode

import _harness

UNET = dict(
    sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
    block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=4,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
)
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=2, layers_per_block=1,
    block_out_channels=(8, 16), norm_num_groups=4, sample_size=8,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
)


def flow(workdir):
    torch.manual_seed(0)
    sample = torch.randn(1, 3, 8, 8)
    unet = UNet2DModel(**UNET).eval()
    vae = AutoencoderKL(**VAE).eval()
    unet.save_pretrained(workdir / "unet")
    unet.save_pretrained(workdir / "unet-sharded", max_shard_size="20KB")
    vae.save_pretrained(workdir / "vae")
    assert (workdir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert len(list((workdir / "unet-sharded").glob("*.safetensors"))) > 2

    out = {}
    for tag, path, kwargs in (
        ("unet", "unet", {}),
        ("unet_sharded", "unet-sharded", {}),
        ("unet_eager", "unet", {"low_cpu_mem_usage": False}),
        ("unet_bf16", "unet", {"torch_dtype": torch.bfloat16}),
    ):
        loaded = UNet2DModel.from_pretrained(workdir / path, **kwargs).eval()
        with torch.no_grad():
            out[f"{tag}.sample"] = loaded(sample.to(loaded.dtype), timestep=10).sample
        out.update({f"{tag}.{k}": v for k, v in loaded.state_dict().items()})
    loaded = AutoencoderKL.from_pretrained(workdir / "vae").eval()
    with torch.no_grad():
        out["vae.latent"] = loaded.encode(sample).latent_dist.mean
        out["vae.decoded"] = loaded.decode(out["vae.latent"]).sample
    out.update({f"vae.{k}": v for k, v in loaded.state_dict().items()})

    # The request bodies of remote encode/decode (built offline): the tensors' raw bytes, from
    # safetensors.torch._to_ndarray.
    for tag, tensor in (("f32", out["vae.latent"]), ("bf16", out["vae.latent"].to(torch.bfloat16))):
        body = prepare_decode(tensor, scaling_factor=0.5)["data"]
        out[f"remote_decode_body.{tag}"] = torch.frombuffer(bytearray(body), dtype=torch.uint8)
    body = prepare_encode(sample)["data"]
    out["remote_encode_body"] = torch.frombuffer(bytearray(body), dtype=torch.uint8)
    return out


if __name__ == "__main__":
    _harness.run(flow, {
        "safetensors_c": ["torch.py:save_file", "torch.py:load_file"],
        "reference": ["torch.py:save_file", "torch.py:load_file"],
    })
