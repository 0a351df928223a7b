"""huggingface_hub: torch serialization helpers and the PyTorchModelHubMixin.

save_torch_state_dict (sharded with max_shard_size, with a shared tensor to drop),
save_torch_model, load_torch_model, load_state_dict_from_file, and a
PyTorchModelHubMixin model's save_pretrained / from_pretrained, which call
safetensors.torch.save_model / load_model after checking safetensors.__version__.
"""

import torch
from huggingface_hub import (
    PyTorchModelHubMixin,
    load_state_dict_from_file,
    load_torch_model,
    save_torch_model,
    save_torch_state_dict,
)
from torch import nn

import _harness


class Net(nn.Module, PyTorchModelHubMixin):
    def __init__(self, width: int = 24, depth: int = 3):
        super().__init__()
        self.embed = nn.Embedding(50, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, 50, bias=False)
        self.head.weight = self.embed.weight           # tied
        self.register_buffer("scale", torch.arange(width, dtype=torch.float64))

    def forward(self, ids):
        x = self.embed(ids)
        for layer in self.layers:
            x = torch.tanh(layer(x)) * self.scale.to(x.dtype)
        return self.head(x)


IDS = torch.tensor([[1, 2, 3, 4, 49]])


def run(model):
    with torch.no_grad():
        return model(IDS)


def flow(workdir):
    net = Net().eval()
    out = {"built.out": run(net)}
    (workdir / "state").mkdir()
    save_torch_state_dict(net.state_dict(), workdir / "state", max_shard_size="3KB")
    assert (workdir / "state" / "model.safetensors.index.json").is_file()
    (workdir / "bf16").mkdir()
    save_torch_model(net.to(torch.bfloat16), workdir / "bf16")
    net = net.to(torch.float32)

    for tag, path in (("state", "state"), ("bf16", "bf16")):
        fresh = Net().eval()
        result = load_torch_model(fresh, workdir / path)
        # The tied head was saved once, as embed.weight.
        assert set(result.missing_keys) <= {"head.weight"} and not result.unexpected_keys, result
        assert fresh.head.weight is fresh.embed.weight
        out[f"{tag}.out"] = run(fresh)
        out.update({f"{tag}.{k}": v for k, v in fresh.state_dict().items()})
    out.update({f"file.{k}": v for k, v in
                load_state_dict_from_file(workdir / "bf16" / "model.safetensors").items()})

    net.save_pretrained(workdir / "mixin")
    assert (workdir / "mixin" / "model.safetensors").is_file()
    loaded = Net.from_pretrained(workdir / "mixin", map_location="cpu").eval()
    out["mixin.out"] = run(loaded)
    out.update({f"mixin.{k}": v for k, v in loaded.state_dict().items()})
    return out


if __name__ == "__main__":
    _harness.run(flow, {
        "safetensors_c": ["torch.py:save_file", "torch.py:load_file", "torch.py:save_model",
                          "torch.py:load_model", "safe_open.__init__"],
        "reference": ["torch.py:save_file", "torch.py:save_model", "torch.py:load_model"],
    })
