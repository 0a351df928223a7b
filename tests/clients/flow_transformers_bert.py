"""transformers: a small BERT saved and loaded with save_pretrained / from_pretrained.

Single file and sharded (max_shard_size), the MLM head's decoder tied to the word embeddings,
and a bfloat16 load (torch_dtype=torch.bfloat16). Built from a config, nothing downloaded.
"""

import torch
from transformers import AutoModelForMaskedLM, BertConfig, BertForMaskedLM

import _harness

CONFIG = dict(
    vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=37, max_position_embeddings=64, type_vocab_size=2,
)
INPUT_IDS = torch.tensor([[2, 17, 41, 5, 88, 3, 0, 9]])


def tied(model) -> bool:
    return (
        model.cls.predictions.decoder.weight.data_ptr()
        == model.bert.embeddings.word_embeddings.weight.data_ptr()
    )


def flow(workdir):
    model = BertForMaskedLM(BertConfig(**CONFIG)).eval()
    assert tied(model)
    out = {f"built.{k}": v for k, v in model.state_dict().items()}

    single, sharded, bf16 = workdir / "single", workdir / "sharded", workdir / "bf16-saved"
    model.save_pretrained(single)
    model.save_pretrained(sharded, max_shard_size="40KB")
    model.to(torch.bfloat16).save_pretrained(bf16)
    assert (single / "model.safetensors").is_file()
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("model-*.safetensors"))) > 2

    for tag, path, kwargs in (
        ("single", single, {}),
        ("sharded", sharded, {}),
        ("as_bf16", single, {"torch_dtype": torch.bfloat16}),
        ("bf16_file", bf16, {}),
    ):
        loaded = AutoModelForMaskedLM.from_pretrained(path, **kwargs).eval()
        assert tied(loaded), tag
        want = torch.bfloat16 if tag.startswith(("as_bf16", "bf16")) else torch.float32
        assert loaded.bert.embeddings.word_embeddings.weight.dtype == want, tag
        with torch.no_grad():
            out[f"{tag}.logits"] = loaded(input_ids=INPUT_IDS).logits
        out.update({f"{tag}.{k}": v for k, v in loaded.state_dict().items()})
    return out


if __name__ == "__main__":
    _harness.run(flow, {
        "safetensors_c": ["torch.py:save_file", "safe_open.__init__"],
        "reference": ["torch.py:save_file"],
    })
