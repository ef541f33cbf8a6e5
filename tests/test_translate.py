"""Cross-language search: with a model, a question is also searched in the documents' language."""

from __future__ import annotations

from pathlib import Path

from bot.types import Attachment, InboundMessage
from conftest import ChatBot, start_knowledge_bot
from fake_openai import FakeOpenAI, reply, status
from knowledge.langs import script_of

POLICY = (b"# Parking policy\n\nVisitors park on level B2 of the Harbour Tower garage; the gate "
          b"code for visitors is 4471.\n\n# Bicycles\n\nBicycles go in the cage next to the "
          b"loading dock, which opens at 7:00.\n")
ZH_POLICY = "# 报销制度\n\n出差住宿标准为每晚六百元，需要在出差结束后十天内提交发票。\n".encode()


async def upload(bot: ChatBot, name: str, data: bytes) -> str:
    message = InboundMessage(key=bot.key(), message_id=f"up-{name}", text="",
                             attachments=(Attachment(kind="file", name=name, data=data),))
    receipt = await bot.runtime.dispatcher.process(message)
    assert receipt is not None and "Added" in receipt.text
    return receipt.text


def test_script_of() -> None:
    assert script_of("访客停车在哪一层？") == "zh"
    assert script_of("Where do visitors park?") == "en"
    assert script_of("Glint NX-748 的保修期是多久？") == "zh"
    assert script_of("12345 !!") == ""


async def ask(tmp_path: Path, embedder, steps: list, doc: tuple[str, bytes], question: str,
              **settings: object):  # type: ignore[no-untyped-def]
    """Upload one document, ask one question through a scripted model; (answer, requests)."""
    async with FakeOpenAI() as model:
        model.script(*steps)
        runtime = await start_knowledge_bot(tmp_path, embedder, llm_base_url=model.base_url,
                                            llm_api_key="k", llm_model="m", **settings)
        try:
            bot = ChatBot(runtime)
            await upload(bot, *doc)
            answer = await bot.say(question)
        finally:
            await runtime.close()
        return answer, model.requests


async def test_a_chinese_question_finds_an_english_document_through_translation(
        tmp_path: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    answer, requests = await ask(
        tmp_path, embedder,
        [reply("Which level do visitors park on, and what is the gate code?"),
         reply("访客停在 B2 层，大门密码 4471 [1]。")],
        ("parking.md", POLICY), "访客停车在哪一层？大门密码是多少？")
    translation, final = requests
    assert "English" in translation["messages"][0]["content"]
    assert translation["messages"][1]["content"] == "访客停车在哪一层？大门密码是多少？"
    prompt = " ".join(str(m["content"]) for m in final["messages"])
    assert "4471" in prompt  # the English passage reached the model
    assert answer.citations and answer.citations[0].source == "Parking policy"


async def test_no_translation_when_the_documents_are_in_the_questions_language(
        tmp_path: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    answer, requests = await ask(tmp_path, embedder, [reply("出差住宿每晚六百元 [1]。")],
                                 ("报销.md", ZH_POLICY), "出差住宿标准是多少？")
    assert len(requests) == 1  # the answer only: no translation call
    assert answer.citations and "报销" in answer.citations[0].source


async def test_a_failing_translation_still_answers(tmp_path: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    answer, _ = await ask(tmp_path, embedder, [status(400), reply("B2 [1]")],
                          ("parking.md", POLICY), "访客停车在哪一层？", llm_max_retries=0)
    assert answer.kind == "answer" and answer.text.startswith("B2")
