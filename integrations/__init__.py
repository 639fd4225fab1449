"""Runtime-specific adapters (installed as ``loop_middleware.integrations``).

Each adapter turns another runtime's traces into loop-middleware Threads:

- :mod:`.openinference` — spans from OpenInference instrumentations (LlamaIndex, OpenAI Agents
  SDK through ``openinference-instrumentation-openai-agents``, DSPy, ...).
- :mod:`.genai` — spans that follow the OpenTelemetry GenAI semantic conventions
  (``opentelemetry-instrumentation-openai-v2``, the OpenAI Agents SDK's OTel exporter, ...).

``langgraph.json`` in this folder serves the companion improvement graph as a LangGraph Studio
project (``langgraph dev --config integrations/langgraph.json``).
"""
