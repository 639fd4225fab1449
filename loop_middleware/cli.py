"""``loopmw``: the command line of loop-middleware.

Every command reads the store given by ``--db`` (any SQLAlchemy URL or a SQLite file path),
else ``$LOOP_DATABASE_URL``, else ``./loop.db``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import LoopError
from .store import Store

app = typer.Typer(
    name="loopmw",
    help=(
        "loop-middleware: a continuous improvement loop for LangChain/LangGraph agents.\n\n"
        "Capture threads (LoopCallbackHandler / LoopMiddleware in your agent, `loopmw ingest`, "
        "or `loopmw import` for past transcripts); "
        "`extract` intents and failure signals; `analyze` root causes; `propose` fixes as "
        "branches or pull requests; `measure` the next cohort; `report` it all as HTML. "
        "`demo` runs the whole loop offline on an example agent."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
console = Console()
err = Console(stderr=True)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="LOOP_DATABASE_URL",
        help="Store URL (sqlite:///loop.db, postgresql+psycopg://...) or a SQLite file path. "
        "Default: $LOOP_DATABASE_URL, else ./loop.db.",
        show_default=False,
    ),
]


def _store(db: str | None, *, must_exist: bool = True) -> Store:
    if must_exist and db and "://" not in db and not Path(db).exists():
        raise LoopError(f"no store at {db} (capture some threads first, or pass --db)")
    return Store(db)


def _fail(exc: Exception) -> None:
    err.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=1)


def _snip(text: str, n: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


@app.callback(invoke_without_command=True)
def _main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        console.print(f"loop-middleware {__version__}")
        raise typer.Exit()


@app.command("threads")
def threads_cmd(
    db: DbOption = None,
    limit: Annotated[int, typer.Option(help="Show at most this many threads.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List captured threads: id, turns, tool calls, errors, opening request."""
    try:
        store = _store(db)
        threads = store.list_threads(limit=limit)
        total = store.count_threads()
    except LoopError as exc:
        _fail(exc)
        return
    if as_json:
        sys.stdout.write(json.dumps([t.model_dump(mode="json") for t in threads], ensure_ascii=False) + "\n")
        return
    table = Table(title=f"{len(threads)} of {total} threads in {store.safe_url}")
    for col in ("thread", "turns", "tools", "errors", "prompt", "opening request"):
        table.add_column(col)
    for t in threads:
        tools = sum(len(turn.tool_calls) for turn in t.turns)
        errors = sum(1 for turn in t.turns for c in turn.tool_calls if c.error) + sum(
            1 for turn in t.turns if turn.error)
        versions = {v.short for turn in t.turns for v in turn.prompt_versions}
        table.add_row(t.thread_id[:24], str(len(t.turns)), str(tools), str(errors),
                      ",".join(sorted(versions)) or "-", _snip(t.opening_request))
    console.print(table)


@app.command("show")
def show_cmd(
    thread_id: Annotated[str, typer.Argument(help="The thread to print.")],
    db: DbOption = None,
) -> None:
    """Print one thread turn by turn: messages, LLM calls (model, tokens, prompt version), tools."""
    try:
        thread = _store(db).get_thread(thread_id)
    except LoopError as exc:
        _fail(exc)
        return
    if thread is None:
        _fail(LoopError(f"no thread {thread_id!r}"))
        return
    console.print(f"[bold]thread {thread.thread_id}[/] ({len(thread.turns)} turns)")
    for turn in thread.turns:
        console.print(f"\n[bold cyan]turn {turn.index}[/] {turn.latency_ms or 0:.0f} ms"
                      + (f" [red]{turn.error}[/]" if turn.error else ""))
        for m in turn.messages:
            style = {"user": "green", "assistant": "blue", "tool": "magenta"}.get(m.role, "white")
            console.print(f"  [{style}]{m.role:>9}[/] {_snip(m.content, 160)}", markup=True,
                          highlight=False)
        for c in turn.llm_calls:
            pv = c.prompt_version
            console.print(f"  [dim]llm #{c.seq} {c.model} in={c.input_tokens} out={c.output_tokens} "
                          f"{c.latency_ms or 0:.1f} ms prompt={(pv.name or 'unnamed') + '@' + pv.short if pv else '-'}[/]")
        for tc in turn.tool_calls:
            console.print(f"  [dim]tool #{tc.seq} {tc.name}({_snip(json.dumps(tc.arguments, default=str), 60)})"
                          f"{' ERROR ' + _snip(tc.error, 80) if tc.error else ''}[/]")
    for f in thread.feedback:
        console.print(f"  [yellow]{f.kind}[/] {f.label or ''} {f.score if f.score is not None else ''} {f.comment or ''}")


@app.command("ingest")
def ingest_cmd(
    files: Annotated[list[Path], typer.Argument(help="OTLP/JSON or JSON Lines span exports.")],
    db: DbOption = None,
) -> None:
    """Read OTLP/JSON span exports from other runtimes (GenAI semantic conventions or
    OpenInference: OpenAI Agents SDK, LlamaIndex, ...) into threads. Bad records are skipped
    with a message naming the record and field; good ones are still ingested."""
    from .capture import ingest_otlp

    try:
        store = _store(db, must_exist=False)
    except LoopError as exc:
        _fail(exc)
        return
    failed = False
    for f in files:
        try:
            report = ingest_otlp(f, store)
        except LoopError as exc:
            err.print(f"[bold red]error:[/] {exc}")
            failed = True
            continue
        console.print(f"{f}: {report}")
        for msg in report.skipped[:20]:
            err.print(f"  [yellow]skipped[/] {msg}")
        if len(report.skipped) > 20:
            err.print(f"  ... and {len(report.skipped) - 20} more")
    if failed:
        raise typer.Exit(code=1)


@app.command("import")
def import_cmd(
    files: Annotated[list[Path], typer.Argument(help="JSON or JSON Lines files to import.")],
    db: DbOption = None,
    fmt: Annotated[str, typer.Option(
        "--format", help="auto (detect per file), openai, langsmith or langfuse.")] = "auto",
    prompt: Annotated[list[Path] | None, typer.Option(
        "--prompt", help="A prompt file of your agent (repeatable): system messages with its "
        "text are tied to it (name, path, git commit) instead of a bare hash.")] = None,
    thread_prefix: Annotated[str, typer.Option(help="Prepended to every imported thread id.")] = "",
    max_message_chars: Annotated[int, typer.Option(
        help="Skip a record with a message longer than this (0 = no limit).")] = 2_000_000,
) -> None:
    """Import conversation history as threads, so past transcripts are analysed like live
    traffic. Formats (detected per file; **--format** says which when a file is ambiguous):

    * **openai**: OpenAI-style message lists, one conversation per record: a list of messages
    (system / user / assistant with `tool_calls` / tool), or an object with `messages` and
    optional `id`, `created_at`, `user_id`, `metadata`, `feedback` (thumbs, score, comment) and
    `outcome`.

    * **langsmith**: LangSmith runs as `Client.list_runs()` returns them (llm, tool and chain
    runs; threads from `thread_id` / `session_id` / `conversation_id` in the metadata;
    `feedback_stats`), and feedback records.

    * **langfuse**: Langfuse traces (`sessionId`, `userId`), observations (GENERATION, TOOL,
    SPAN, ...) and scores as the public API returns them (API pages `{"data": [...]}` too).

    A turn starts at each new user message; each assistant message is an LLM call, its tool
    calls are paired with the tool results. System prompts are versioned by hash (pass
    **--prompt** to tie them to your files), private data is redacted as in live capture. Bad
    records are skipped with a message naming the record and field; importing the same file
    again changes nothing."""
    from .capture import import_transcripts
    from .prompts import load_prompt

    if fmt not in ("auto", "openai", "langsmith", "langfuse"):
        _fail(LoopError("--format takes auto, openai, langsmith or langfuse"))
    try:
        store = _store(db, must_exist=False)
        for p in prompt or []:
            load_prompt(p)
        bar, update = _progress_bar()
        with bar:
            report = import_transcripts(store, files, format=fmt,  # type: ignore[arg-type]
                                        thread_prefix=thread_prefix,
                                        max_message_chars=max_message_chars or None, progress=update)
    except LoopError as exc:
        _fail(exc)
        return
    for name, f in report.files.items():
        console.print(f"{name}: read as {f}", highlight=False)
    console.print(str(report), highlight=False)
    for label, msgs in (("skipped", report.skipped), ("warning", report.warnings)):
        for msg in msgs[:20]:
            err.print(f"  [yellow]{label}[/] {msg}", highlight=False, markup=True)
        if len(msgs) > 20:
            err.print(f"  ... and {len(msgs) - 20} more {label} messages")


@app.command("feedback")
def feedback_cmd(
    thread_id: Annotated[str, typer.Argument(help="The thread the feedback is about.")],
    thumbs: Annotated[str | None, typer.Option(help="'up' or 'down'.")] = None,
    score: Annotated[float | None, typer.Option(help="A numeric score (0 = worst).")] = None,
    outcome: Annotated[str | None, typer.Option(help="A business outcome: converted, churned, escalated...")] = None,
    comment: Annotated[str | None, typer.Option(help="Free text.")] = None,
    db: DbOption = None,
) -> None:
    """Attach user feedback or a business outcome to a thread after the fact."""
    try:
        store = _store(db)
        if outcome:
            store.add_outcome(thread_id, outcome, value=score, comment=comment)
        else:
            if thumbs not in (None, "up", "down"):
                raise LoopError("--thumbs takes 'up' or 'down'")
            store.add_feedback(thread_id, thumbs=None if thumbs is None else thumbs == "up",
                               score=score, comment=comment)
    except LoopError as exc:
        _fail(exc)
        return
    console.print(f"recorded for thread {thread_id}")


def _progress_bar() -> tuple[Any, Any]:
    """A rich progress bar and a ``(stage, done, total)`` callback feeding it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=err, transient=True)
    tasks: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    return bar, update


EmbedderOption = Annotated[
    str, typer.Option(help="Intent embeddings: default (local MiniLM), fast (static, distilled "
                           "from it; a first run discovers intents on a 2,000-thread sample: "
                           "several times faster on big stores, a little coarser), tfidf (no "
                           "model).")
]


def _say_embedder(name: str, mode: str) -> None:
    """Say loudly which embedder made the intents and the quality to expect from it."""
    from rich.markup import escape

    from .extract import EXPECTED_NMI, describe_embedder

    line = escape(describe_embedder(name, mode))  # "[embeddings]" is not markup
    weaker = name in EXPECTED_NMI and name != "minilm"
    err.print(f"[bold yellow]note:[/] {line}" if weaker else line, highlight=False)


def _intents_table(result: Any) -> Table:
    table = Table(title=f"{sum(1 for i in result.intents if i.parent_id is None)} intents over "
                        f"{len(result.assignments)} threads ({result.embedder})")
    for col in ("intent", "category", "share", "threads", "top signals"):
        table.add_column(col)
    tops = sorted((i for i in result.intents if i.parent_id is None), key=lambda i: -i.size)
    for it in tops:
        sig = ", ".join(f"{k} ({n})" for k, n in result.top_signals(it.id))
        table.add_row(_snip(it.name, 40), it.category, f"{result.share(it.id):.1%}", str(it.size), sig or "-")
    return table


WorkersOption = Annotated[int, typer.Option(
    min=1, help="Run the work units in this many spawned worker processes (each opens the store "
                "itself: a file or PostgreSQL, not an in-memory database).")]
RayOption = Annotated[str | None, typer.Option(
    "--ray", help="Run the work units on Ray: 'local' (a local Ray with --workers CPUs) or a "
                  "cluster address (ray://head:10001); needs loop-middleware[ray] and a store "
                  "every node reaches (PostgreSQL).")]


def _executor(workers: int, ray: str | None) -> Any:
    if ray is None:
        return None
    from .scale import RayExecutor

    return RayExecutor(None if ray == "local" else ray, num_cpus=workers if ray == "local" else None)


@app.command("extract")
def extract_cmd(
    db: DbOption = None,
    embedder: EmbedderOption = "default",
    rebuild: Annotated[bool, typer.Option(help="Rediscover intents from all threads.")] = False,
    workers: WorkersOption = 1,
    ray: RayOption = None,
) -> None:
    """Stage 3: detect failure signals in new threads and assign every thread to a stable
    intent (discovered without labels); prints the intents with their share and top signals."""
    from .extract import extract

    if embedder not in ("default", "fast", "tfidf"):
        _fail(LoopError("--embedder takes default, fast or tfidf"))
    try:
        store = _store(db)
        bar, update = _progress_bar()
        with bar:
            result = extract(store, mode=embedder, rebuild=rebuild, progress=update,  # type: ignore[arg-type]
                             workers=workers, executor=_executor(workers, ray))
    except LoopError as exc:
        _fail(exc)
        return
    console.print(_intents_table(result))
    _say_embedder(result.embedder, embedder)
    console.print(f"{result.threads_processed} new or updated threads, {len(result.signals)} signals, "
                  f"{len(result.new_intents)} new intents in {result.seconds:.1f} s")


@app.command("analyze")
def analyze_cmd(
    db: DbOption = None,
    embedder: EmbedderOption = "default",
    top: Annotated[int, typer.Option(help="Show this many diagnoses.")] = 10,
    min_group_size: Annotated[int, typer.Option(help="Hide diagnoses covering fewer threads.")] = 5,
    sample: Annotated[int, typer.Option(
        min=1, help="Threads diagnosis reads for mechanisms and evidence (a uniform sample); "
                    "the numbers are counted over every session by the database.")] = 10_000,
    workers: WorkersOption = 1,
    ray: RayOption = None,
) -> None:
    """Stages 3-4: extract, then diagnose root causes per intent x failure signal; prints the
    diagnoses ranked by impact, with their share of sessions and significance."""
    from .diagnose import diagnose_store
    from .extract import extract

    if embedder not in ("default", "fast", "tfidf"):
        _fail(LoopError("--embedder takes default, fast or tfidf"))
    try:
        store = _store(db)
        bar, update = _progress_bar()
        with bar:
            result = extract(store, mode=embedder, progress=update,  # type: ignore[arg-type]
                             workers=workers, executor=_executor(workers, ray))
            found = diagnose_store(store, sample_size=sample)
        shown = [d for d in found if d.sessions_affected >= min_group_size]
        store.save_diagnoses(shown)
    except LoopError as exc:
        _fail(exc)
        return
    _say_embedder(result.embedder, embedder)
    table = Table(title=f"{len(shown)} diagnoses over {result.threads_total} threads"
                  + (f" ({len(found) - len(shown)} hidden: fewer than {min_group_size} threads)"
                     if len(found) > len(shown) else ""))
    for col in ("#", "intent", "failure mode", "signal", "sessions", "in intent / rest", "lift", "q"):
        table.add_column(col)
    for i, d in enumerate(shown[:top], 1):
        table.add_row(str(i), _snip(d.intent_name, 30), d.failure_mode, d.signal,
                      f"{d.sessions_affected} ({d.share_of_sessions:.1%})",
                      f"{d.rate_in_intent:.0%} / {d.rate_elsewhere:.0%}", f"{d.lift:.1f}x",
                      f"{d.q_value:.1g}")
    console.print(table)
    from rich.markup import escape

    for i, d in enumerate(shown[:top], 1):
        console.print(f"[bold]{i}. {escape(d.headline or d.summary)}[/]", highlight=False)
        if d.headline:
            console.print(f"   {escape(d.summary)}", highlight=False)
        per_intent = d.details.get("intents") or []
        if len(per_intent) > 1:  # one root cause across intents: where its sessions are
            listed = [e for e in per_intent if e["sessions"] >= min_group_size][:8]
            more = len(per_intent) - len(listed)
            console.print(f"   in {len(per_intent)} intents: " + escape(", ".join(
                f"{_snip(str(e['intent_name']), 30)} {e['sessions']} ({e['rate']:.0%})"
                for e in listed)) + (f"{'; ' if listed else ''}{more} more with fewer sessions each"
                                     if more else ""), highlight=False)


RepoOption = Annotated[Path, typer.Option("--repo", envvar="LOOP_REPO_DIR",
                                          help="The host agent's git repository.")]


@app.command("propose")
def propose_cmd(
    db: DbOption = None,
    repo: RepoOption = Path("."),
    allow: Annotated[list[str] | None, typer.Option(
        "--allow", help="Glob of files fixes may change (repeatable). Default: prompts/**/*.md, agent.yaml.")] = None,
    config_file: Annotated[list[str] | None, typer.Option(
        "--config-file", help="Harness/config file config fixes may edit (repeatable).")] = None,
    agent_factory: Annotated[str | None, typer.Option(
        envvar="LOOP_AGENT_FACTORY", help="module:function building your agent from a prompt "
        "directory; enables the replay guardrail.")] = None,
    embedder: EmbedderOption = "default",
    yes: Annotated[bool, typer.Option("--yes", help="Approve every fix without asking "
                                                   "(scripted use only).")] = False,
    github_repo: Annotated[str | None, typer.Option(envvar="LOOP_GITHUB_REPO",
                                                    help="owner/name to open draft PRs in.")] = None,
    github_base_url: Annotated[str | None, typer.Option(
        envvar="LOOP_GITHUB_BASE_URL", help="GitHub API URL (Enterprise: https://HOST/api/v3).")] = None,
) -> None:
    """Stages 3-5 through the companion graph: extract, diagnose, propose a minimal checked diff
    per diagnosis, ask you to approve or reject each one, then open it as a branch + .patch +
    PR body (and a draft pull request when GITHUB_TOKEN and --github-repo are set).
    Nothing is ever merged."""
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.types import Command

    from .config import LoopConfig
    from .graph import build_graph

    try:
        cfg = LoopConfig.from_env(
            database_url=db, repo_dir=str(repo), allowed_globs=allow or None,
            config_files=config_file or None, agent_factory=agent_factory, embedder=embedder,
            github_repo=github_repo, github_base_url=github_base_url,
        )
        graph = build_graph(checkpointer=InMemorySaver())
        run_cfg: Any = {"configurable": {"thread_id": "cli", "loop": cfg.model_dump()}}
        state = graph.invoke({}, config=run_cfg)
        for line in state.get("log", []):
            err.print(f"[dim]{line}[/]")
        if "__interrupt__" in state:
            fixes = state["__interrupt__"][0].value["fixes"]
            if yes:
                answer: Any = "approve_all"
            else:
                from rich.syntax import Syntax

                answer = {}
                for f in fixes:
                    console.rule(f"{f['title']}  [{f['kind']}] {f['target_file']}")
                    console.print(Syntax(f["diff"], "diff", word_wrap=True))
                    console.print(f"metric to watch: {f['metric']} (needs {f['sample_size_needed']} threads)")
                    answer[f["id"]] = "approve" if typer.confirm("Open this fix for review?", default=False) else "reject"
            state = graph.invoke(Command(resume=answer), config=run_cfg)
    except LoopError as exc:
        _fail(exc)
        return
    published = state.get("published", [])
    if not published:
        console.print("no fix opened")
    for p in published:
        if p.get("error"):
            console.print(f"[red]{p['fix_id']}: {p['error']}[/]")
            continue
        console.print(f"[green]{p['branch']}[/]  patch: {p['patch']}  body: {p['body']}"
                      + (f"  PR: {p['pr_url']}" if p.get("pr_url") else "")
                      + (f"  [yellow]GitHub: {p['github_error']}[/]" if p.get("github_error") else ""))


@app.command("measure")
def measure_cmd(db: DbOption = None, alpha: Annotated[float, typer.Option(help="Error rate.")] = 0.05) -> None:
    """Stage 6: compare each shipped fix's next cohort with the cohort before it, per intent,
    and decide keep / revert / wait (with how many more threads are needed)."""
    from .measure import measure_all

    try:
        results = measure_all(_store(db), alpha=alpha)
    except LoopError as exc:
        _fail(exc)
        return
    table = Table(title=f"{len(results)} fixes measured")
    for col in ("fix", "intent", "metric", "before", "after", "delta (CI)", "decision", "needs"):
        table.add_column(col)
    for r in results:
        c = r.comparison
        if c is None:
            table.add_row(_snip(r.fix_id, 36), _snip(r.intent_name or "-", 24), _snip(r.metric, 30),
                          "-", "-", "-", r.decision, str(r.threads_needed or "-"))
            continue
        table.add_row(_snip(r.fix_id, 36), _snip(r.intent_name or "-", 24), _snip(r.metric, 30),
                      f"{c.before.rate:.1%} of {c.before.n}", f"{c.after.rate:.1%} of {c.after.n}",
                      f"{c.delta:+.1%} ({c.delta_ci[0]:+.1%}, {c.delta_ci[1]:+.1%})",
                      r.decision, str(r.threads_needed or "-"))
    console.print(table)
    for r in results:
        console.print(f"[bold]{r.fix_id}[/]: {r.reason}", highlight=False)


@app.command("report")
def report_cmd(
    db: DbOption = None,
    out: Annotated[Path, typer.Option(help="The HTML file to write.")] = Path("loop-report.html"),
    min_group_size: Annotated[int, typer.Option(help="Hide groups with fewer threads.")] = 5,
) -> None:
    """Write one self-contained HTML report: intents and trends, intent x signal heat map,
    ranked diagnoses with their evidence threads, fixes with before/after charts, loop health."""
    from .report import render_report
    from .report._build import build_report_data

    try:
        bar, update = _progress_bar()
        with bar:
            data = build_report_data(_store(db), min_group_size=min_group_size, progress=update)
        path = render_report(data, out)
    except LoopError as exc:
        _fail(exc)
        return
    console.print(f"report: {path}")


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option(help="Where report.html, summary.json, the store and the "
                                           "throw-away host repository go.")] = Path("loop-demo"),
    threads: Annotated[int, typer.Option(help="Conversations per cohort.")] = 400,
    seed: Annotated[int, typer.Option(help="Simulation seed.")] = 0,
    embedder: EmbedderOption = "default",
    example: Annotated[Path | None, typer.Option(help="The example agent folder: "
                                                      "examples/support_agent (default) or "
                                                      "examples/devplatform_agent.")] = None,
) -> None:
    """The whole loop, offline, in a few minutes: simulated production traffic on an example
    agent with planted defects -> analyze -> diagnose -> propose fixes as branches -> merge them
    (standing in for a human) -> next cohort -> measure -> HTML report."""
    from .demo import run_demo
    from .extract import embedder_status

    if embedder not in ("default", "fast", "tfidf"):
        _fail(LoopError("--embedder takes default, fast or tfidf"))
    _say_embedder(embedder_status(embedder).name, embedder)  # type: ignore[arg-type]
    try:
        run_demo(out, threads=threads, seed=seed, embedder=embedder, example=example,
                 say=lambda line: console.print(line, highlight=False, markup=False))
    except LoopError as exc:
        _fail(exc)


@app.command("doctor")
def doctor_cmd(
    db: Annotated[str | None, typer.Option("--db", envvar="LOOP_DATABASE_URL", show_default=False,
                                           help="Also check this store (URL or SQLite path).")] = None,
) -> None:
    """Check this install: which embedder each mode runs and the intent quality to expect, that
    the shipped static model loads offline, the optional extras, and (with **--db**) the store
    and the embedder its intents were built with. Exits 1 when something is broken."""
    from ._doctor import run_checks

    checks = run_checks(db, check_store=db is not None)
    table = Table(title=f"loopmw doctor ({__version__})")
    for col in ("check", "", "detail"):
        table.add_column(col)
    marks = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[bold red]FAIL[/]",
             "info": "[dim]-[/]"}
    from rich.markup import escape

    for c in checks:
        table.add_row(escape(c.name), marks[c.level], escape(c.detail))
    console.print(table)
    if any(c.level == "fail" for c in checks):
        raise typer.Exit(code=1)


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``loopmw`` console script."""
    return app(args=argv)


if __name__ == "__main__":  # pragma: no cover
    main()
