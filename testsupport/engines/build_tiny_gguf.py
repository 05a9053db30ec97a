"""Write a tiny random-weights llama GGUF for the local Ollama server.

Run with the Ollama engine's own Python (it has PyPI `gguf` and numpy), not servescope's:

    python build_tiny_gguf.py OUT.gguf [--type Q8_0]

2 layers, n_embd 64, n_ff 128, 4 heads (4 KV heads), 402 SPM tokens including <s>, </s>,
<|im_start|> and <|im_end|>, a ChatML chat_template, all F32 (133,696 parameters, about
0.5 MB). The text it writes is noise; the server, its scheduler and timings are real.

`--type Q8_0` writes the SAME weights (same seed) with every matrix quantized to Q8_0 by
gguf-py's reference quantizer (gguf.quants, bit-exact with ggml's), the norms kept F32 and
general.file_type MOSTLY_Q8_0, as llama-quantize would: the same model in another
quantization, so a comparison of the two must say that they differ.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import gguf
import gguf.quants
import numpy as np

N_LAYERS = 2
N_EMBD = 64
N_FF = 128
N_HEAD = 4
N_HEAD_KV = 4
CONTEXT_LENGTH = 2048
SEED = 1234
EOG_TOKEN_IDS = (2, 4)  # </s>, <|im_end|>

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have "
    "from or one had by word but not what all were we when your can said there use an each "
    "which she do how their if will up other about out many then them hello world why sky "
    "blue tiny model test ollama llama server token"
).split()


def vocab() -> tuple[list[str], list[float], list[int]]:
    """SPM vocabulary: specials, the 256 byte fallbacks, then pieces with falling scores."""
    tt = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    types = [tt.UNKNOWN, tt.CONTROL, tt.CONTROL, tt.CONTROL, tt.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [tt.BYTE] * 256
    pieces = ["\u2581"] + ["\u2581" + w for w in WORDS]
    pieces += [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces += [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    pieces += [str(d) for d in range(10)] + list(".,!?'-:;()")
    tokens += pieces
    types += [tt.NORMAL] * len(pieces)
    scores = [0.0] * (len(tokens) - len(pieces)) + [-1.0 - i / 100 for i in range(len(pieces))]
    return tokens, scores, [int(t) for t in types]


def output_matrix(rng: np.random.Generator, n_vocab: int) -> np.ndarray:
    """Logit rows, with the end-of-generation tokens' rows zero.

    Their logit is then always 0 while the others spread around it (std about 2), so greedy
    decoding and the default top_k 40 never pick them: a request runs to its num_predict,
    which gives load tests predictable output lengths. With random rows a request stopped
    after about 30-150 tokens.
    """
    out = (rng.standard_normal((n_vocab, N_EMBD)) * 0.25).astype(np.float32)
    out[list(EOG_TOKEN_IDS)] = 0.0
    return out


# --type -> (the matrices' tensor type, general.file_type). Norms (1-D) stay F32 in both.
TYPES = {
    "F32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "Q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}


def build(out: Path, kind: str = "F32") -> None:
    qtype, file_type = TYPES[kind]
    tokens, scores, types = vocab()
    n_vocab = len(tokens)
    rng = np.random.default_rng(SEED)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    ones = np.ones(N_EMBD, dtype=np.float32)
    head_dim = N_EMBD // N_HEAD

    tmp = out.with_name(out.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), arch="llama")
    w.add_name("servescope tiny llama")
    w.add_context_length(CONTEXT_LENGTH)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYERS)
    w.add_feed_forward_length(N_FF)
    w.add_rope_dimension_count(head_dim)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(file_type)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    def matrix(name: str, data: np.ndarray) -> None:
        """A 2-D weight in the file's type (its rows, 64 or 128 values, are whole Q8_0
        blocks of 32); quantized, the writer derives the logical shape from the bytes."""
        if qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    # numpy shape is (rows, cols) = (out_features, in_features); GGUF stores it reversed.
    matrix("token_embd.weight", rand(n_vocab, N_EMBD))
    w.add_tensor("output_norm.weight", ones.copy())
    matrix("output.weight", output_matrix(rng, n_vocab))
    kv_dim = head_dim * N_HEAD_KV
    for i in range(N_LAYERS):
        p = f"blk.{i}"
        w.add_tensor(f"{p}.attn_norm.weight", ones.copy())
        matrix(f"{p}.attn_q.weight", rand(N_EMBD, N_EMBD))
        matrix(f"{p}.attn_k.weight", rand(kv_dim, N_EMBD))
        matrix(f"{p}.attn_v.weight", rand(kv_dim, N_EMBD))
        matrix(f"{p}.attn_output.weight", rand(N_EMBD, N_EMBD))
        w.add_tensor(f"{p}.ffn_norm.weight", ones.copy())
        matrix(f"{p}.ffn_gate.weight", rand(N_FF, N_EMBD))
        matrix(f"{p}.ffn_up.weight", rand(N_FF, N_EMBD))
        matrix(f"{p}.ffn_down.weight", rand(N_EMBD, N_FF))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, out)


def main(argv: list[str]) -> int:
    args, kind = argv[1:], "F32"
    if len(args) == 3 and args[1] == "--type" and args[2] in TYPES:
        args, kind = args[:1], args[2]
    if len(args) != 1:
        print(f"usage: build_tiny_gguf.py OUT.gguf [--type {'|'.join(TYPES)}]", file=sys.stderr)
        return 2
    out = Path(args[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    build(out, kind)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
