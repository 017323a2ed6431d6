"""Settings of the wake conversation (section ``chat``): ``--set chat.max_new_tokens=64``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ChatConfig(BaseModel):
    """The chat loop: replies, context window, fact extraction, drowsiness."""

    model_config = ConfigDict(extra="forbid")

    extractor: Literal["rules", "rules+model"] = Field(
        "rules", description="Fact extraction from user turns: 'rules' (first-person patterns), or "
        "'rules+model' (the model also lists facts; its objects must still occur in the user's words). "
        "The bundled 135M model adds little and costs a generation per turn: see benchmarks/extraction.py.")
    inject: bool = Field(True, description="Store extracted facts in the weights at once (MEMIT); off only "
                         "logs them in the conversation table.")
    max_new_tokens: int = Field(96, gt=0, description="Longest reply, in tokens.")
    temperature: float = Field(0.0, ge=0, description="0 decodes greedily; above 0 samples at this temperature.")
    top_p: float = Field(9.0e-1, gt=0, le=1, description="Nucleus sampling mass (only when temperature > 0).")
    repetition_penalty: float = Field(
        1.1, ge=1, description="Penalty on repeating earlier tokens (1.0 is none); small models loop without it.")
    context_tokens: int = Field(
        2048, gt=0, description="Token budget of the conversation context (system prompt, turns, reply); "
        "capped by the model's own maximum.")
    compact_at: float = Field(
        7.5e-1, gt=0, le=1, description="Compact when the prompt plus a full reply would exceed this share of "
        "context_tokens: older turns become a short summary of what the user said.")
    keep_turns: int = Field(4, ge=0, description="Most recent messages kept verbatim by a compaction.")
    stream: Literal["auto", "always", "never"] = Field(
        "auto", description="Print the reply token by token: 'auto' does so when stdout is a terminal.")
    auto_sleep: Literal["off", "suggest", "run"] = Field(
        "suggest", description="When drowsiness crosses health.nap_threshold or health.sleep_threshold after "
        "an injection: 'suggest' prints a hint, 'run' runs the nap or full-sleep flow, 'off' does nothing.")
    identity_file: str | None = Field(
        None, description="JSONL of {question, answer} replacing the bundled identity set in the system prompt.")
    max_turn_chars: int = Field(
        4000, gt=0, description="Longer user turns are cut to this many characters (the log notes the cut).")


class ServeConfig(BaseModel):
    """``sleepwake serve``: the OpenAI-compatible chat API over a home."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Address to listen on. Anything but loopback requires an API key.")
    port: int = Field(8000, ge=1, le=65535, description="Port to listen on.")
    api_key: str | None = Field(None, description="Bearer token clients must send (Authorization: Bearer KEY); "
                                "also read from $SLEEPWAKE_API_KEY. Required unless the host is loopback.")
    model_name: str = Field("sleepwake", min_length=1, description="The model id clients ask for (GET /v1/models lists it).")
    max_request_bytes: int = Field(65536, gt=0, description="Largest request body accepted (413 beyond).")
    max_tokens: int = Field(512, gt=0, description="Largest max_tokens a request may ask for (400 beyond).")
    cors_origins: list[str] = Field(
        default_factory=list, description="Browser origins allowed to call the API (CORS), e.g. "
        "['http://localhost:3000'] for a web chat app served there; ['*'] any site. None by default: any web page "
        "the user opens could otherwise read the memory through a loopback server.")
    queue: int = Field(16, gt=0, description="Requests waiting for the model at most; one more is answered 429.")
    poll_s: float = Field(2.0, gt=0, description="How often an idle server looks for a finished sleep (to load "
                          "its weights) and retries facts waiting for a busy home.")
    auto_sleep: Literal["off", "run"] = Field(
        "off", description="'run' starts a full sleep when drowsiness reaches health.sleep_threshold: the "
        "full-sleep/on-demand deployment when PREFECT_API_URL is set, else a 'sleepwake sleep' process. The "
        "server keeps answering meanwhile.")
