"""Conformance: LangChain chains without LangGraph (LCEL, ``RunnableWithMessageHistory``,
retrievers) and resilience wrappers (``with_retry``, ``with_fallbacks``), through the callback
handler, sync and async."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.chat_history import InMemoryChatMessageHistory
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableLambda
from langchain_core.runnables.history import RunnableWithMessageHistory

from tests._fakes import reply
from tests.capture.conformance._host import Capture, Host, check_turn, text_sha

SYSTEM = "You are Acme's assistant. Use the context when there is one."


# Deprecated upstream (LangGraph persistence is the recommended way) but still run in production.
@pytest.mark.filterwarnings("ignore::langchain_core._api.deprecation.LangChainDeprecationWarning")
@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_runnable_with_message_history(sqlite_url: str, use_async: bool) -> None:
    """A chat chain keeps its history by ``session_id``: turns are grouped by it and each LLM
    call carries the history the chain loaded."""
    host = Host()
    prompt = ChatPromptTemplate([("system", SYSTEM), MessagesPlaceholder("history"), ("human", "{input}")])
    chain = prompt | host.model(reply("Hi Bo!"), reply("Your name is Bo."))
    histories: dict[str, InMemoryChatMessageHistory] = {}
    chat = RunnableWithMessageHistory(
        chain, lambda sid: histories.setdefault(sid, InMemoryChatMessageHistory()),
        input_messages_key="input", history_messages_key="history")
    cap = Capture("handler", sqlite_url)
    for key, text in (("a", "I'm Bo"), ("b", "What is my name?")):
        cfg = cap.config(configurable={"session_id": "sess-1"})
        with host.invocation(key):
            if use_async:
                asyncio.run(chat.ainvoke({"input": text}, cfg))
            else:
                chat.invoke({"input": text}, cfg)
    turns = cap.threads()["sess-1"].turns
    assert len(turns) == 2
    check_turn(turns[0], host, "a", user="I'm Bo", reply="Hi Bo!", prompt_shas=[text_sha(SYSTEM)])
    check_turn(turns[1], host, "b", user="What is my name?", reply="Your name is Bo.")
    assert [m.role for m in turns[1].llm_calls[0].input_messages] == ["system", "user", "assistant", "user"]


class _Docs(BaseRetriever):
    """A host retriever over a fixed list of documents."""

    docs: list[str]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return [Document(page_content=d) for d in self.docs if any(w in d.lower() for w in query.lower().split())]


def test_rag_chain_retriever_is_a_tool_call(sqlite_url: str) -> None:
    """Beyond the issue's list: a retriever in an LCEL RAG chain is recorded as a tool call of
    the turn (query and documents), so ungrounded-answer detection sees what was retrieved."""
    host = Host()
    retriever = _Docs(docs=["Refunds take 5 days.", "Shipping is free."], name="kb")
    prompt = ChatPromptTemplate([("system", SYSTEM + "\nContext: {context}"), ("human", "{question}")])
    chain = ({"context": retriever | RunnableLambda(lambda ds: " ".join(d.page_content for d in ds)),
              "question": RunnableLambda(lambda q: q)} | prompt
             | host.model(reply("Refunds take 5 days.")) | StrOutputParser())
    cap = Capture("handler", sqlite_url)
    with host.invocation("q"):
        assert chain.invoke("how long do refunds take", cap.config("rag")) == "Refunds take 5 days."
    turn = cap.threads()["rag"].turns[0]
    assert turn.user_text == "how long do refunds take"
    assert turn.reply_text == "Refunds take 5 days."
    assert [(c.name, c.arguments, c.result) for c in turn.tool_calls] == [
        ("kb", {"query": "how long do refunds take"}, "Refunds take 5 days.")]
    assert len(turn.llm_calls) == 1 and turn.llm_calls[0].input_messages[0].content.endswith(
        "Context: Refunds take 5 days.")


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_with_retry_records_each_attempt(sqlite_url: str, use_async: bool) -> None:
    host = Host()
    model = host.model(ConnectionError("connection reset"), reply("Second try worked."))
    chain = ChatPromptTemplate([("system", SYSTEM), ("human", "{q}")]) | model.with_retry(
        stop_after_attempt=3, wait_exponential_jitter=False)
    cap = Capture("handler", sqlite_url)
    with host.invocation("r"):
        if use_async:
            asyncio.run(chain.ainvoke({"q": "hello"}, cap.config("retry")))
        else:
            chain.invoke({"q": "hello"}, cap.config("retry"))
    turn = cap.threads()["retry"].turns[0]
    check_turn(turn, host, "r", user="hello", reply="Second try worked.")
    assert len(turn.llm_calls) == 2 and "connection reset" in (turn.llm_calls[0].error or "")


def test_with_fallbacks_records_the_failure_and_the_fallback(sqlite_url: str) -> None:
    host = Host()
    primary = host.model(TimeoutError("primary model timed out"), name="primary")
    backup = host.model(reply("Answer from the backup model."), name="backup")
    chain = ChatPromptTemplate([("system", SYSTEM), ("human", "{q}")]) | primary.with_fallbacks([backup])
    cap = Capture("handler", sqlite_url)
    with host.invocation("f"):
        chain.invoke({"q": "hello"}, cap.config("fb"))
    turn = cap.threads()["fb"].turns[0]
    check_turn(turn, host, "f", user="hello", reply="Answer from the backup model.")
    assert turn.error is None
    assert "primary model timed out" in (turn.llm_calls[0].error or "")
    assert turn.llm_calls[1].error is None


def test_chain_error_marks_the_turn(sqlite_url: str) -> None:
    host = Host()
    chain = ChatPromptTemplate([("system", SYSTEM), ("human", "{q}")]) | host.model(
        RuntimeError("quota exceeded"))
    cap = Capture("handler", sqlite_url)
    with host.invocation("e"), pytest.raises(RuntimeError):
        chain.invoke({"q": "hello"}, cap.config("err"))
    turn = cap.threads()["err"].turns[0]
    check_turn(turn, host, "e", user="hello", reply=None, error="quota exceeded")


def test_custom_input_key_is_the_user_text(sqlite_url: str) -> None:
    """A chain whose only string input has a custom name: it is the user's message."""
    host = Host()
    chain: Any = ChatPromptTemplate([("system", SYSTEM), ("human", "{user_message}")]) | host.model(
        reply("ok"))
    cap = Capture("handler", sqlite_url)
    with host.invocation("c"):
        chain.invoke({"user_message": "ping"}, cap.config("custom"))
    check_turn(cap.threads()["custom"].turns[0], host, "c", user="ping", reply="ok")
