"""Subject routing (lora.routing=subject) on the tiny random Llama: the adapter acts exactly as if
merged on sequences that name a stored subject, and not at all on anything else."""

from __future__ import annotations

import pytest
import torch

from conftest import seed_home
from sleepwake.config import load_settings
from sleepwake.errors import ConfigError
from sleepwake.facts import Fact
from sleepwake.memory import Memory
from sleepwake.models.routing import Router, layer_of, whitening
from sleepwake.storage.home import Home

FACT = Fact(subject="Aria Nakamura", relation="The hometown of {}", object="Thessaloniki")
OTHER_TEXT = "The weather in the mountains changes quickly in the spring."
pytestmark = pytest.mark.usefixtures("one_thread", "cache_env")


@pytest.fixture(scope="module")
def routed_home(tmp_path_factory, tiny_settings_overrides):
    """A home with FACT's edit and one random adapter on blocks 1-3 (big enough to move every logit)."""
    root = seed_home(tmp_path_factory, tiny_settings_overrides, [FACT], "routing")
    memory = Memory.open(Home(root), load_settings(None, tiny_settings_overrides))
    torch.manual_seed(1)
    factors = {}
    for layer in (1, 2, 3):
        for module in ("self_attn.q_proj", "mlp.up_proj", "mlp.down_proj"):
            name = f"model.layers.{layer}.{module}"
            out_dim, in_dim = memory.backend.module_weight(name).shape
            factors[name] = (0.3 * torch.randn(out_dim, 2), 0.3 * torch.randn(in_dim, 2))
    memory.store_adapter("sws", None, factors)
    return root


def open_memory(root, overrides, routing: str) -> Memory:
    settings = load_settings(None, [*overrides, f"lora.routing={routing}", "lora.route_threshold=0.99"])
    return Memory.open(Home(root), settings, writable=False)


def logits(memory: Memory, text: str) -> torch.Tensor:
    ids = torch.tensor([memory.backend.encode(text)])
    with torch.no_grad():
        return memory.backend.model(input_ids=ids).logits[0]


def test_routed_adapter_acts_only_where_a_stored_subject_is_named(routed_home, tiny_settings_overrides):
    merged = open_memory(routed_home, tiny_settings_overrides, "off")
    on_fact, on_other = logits(merged, FACT.prompt()), logits(merged, OTHER_TEXT)
    merged.compose(with_adapters=False)
    edits_only = logits(merged, OTHER_TEXT)
    assert not torch.allclose(on_other, edits_only, atol=1e-3)  # the adapter does change ordinary text when merged

    routed = open_memory(routed_home, tiny_settings_overrides, "subject")
    assert routed.backend.routed is not None and routed.backend.routed.router.layer == 1
    assert torch.allclose(logits(routed, FACT.prompt()), on_fact, atol=1e-4)
    assert torch.allclose(logits(routed, OTHER_TEXT), edits_only, atol=1e-5)
    # generation keeps the routing decided on the prompt through every decoding step
    merged.compose()
    prompts = [merged.backend.encode(FACT.prompt()), merged.backend.encode(OTHER_TEXT)]
    want_fact = merged.backend.generate_ids(prompts[:1], 6)
    merged.compose(with_adapters=False)
    want_other = merged.backend.generate_ids(prompts[1:], 6)
    assert routed.backend.generate_ids(prompts[:1], 6) == want_fact
    assert routed.backend.generate_ids(prompts[1:], 6) == want_other


def test_routed_digest_is_stable_and_tells_routing_apart(routed_home, tiny_settings_overrides):
    merged = open_memory(routed_home, tiny_settings_overrides, "off")
    plain = merged.weights_digest()
    routed = open_memory(routed_home, tiny_settings_overrides, "subject")
    first = routed.weights_digest()
    routed.compose()
    assert routed.weights_digest() == first != plain
    routed.compose(with_adapters=False)  # base + edits: nothing routed
    assert routed.backend.routed is None
    merged.compose(with_adapters=False)
    assert routed.weights_digest() == merged.weights_digest()


def test_routing_needs_the_torch_backend_and_auto_picks_it_there():
    with pytest.raises(ConfigError, match="needs backend=torch"):
        load_settings(None, ["backend=mlx", "lora.routing=subject"])
    assert load_settings(None, []).lora.routing == "auto" and load_settings(None, []).routes_adapters()
    assert not load_settings(None, ["backend=mlx"]).routes_adapters()
    assert not load_settings(None, ["lora.routing=off"]).routes_adapters()


def test_whitening_makes_the_calibration_isotropic():
    torch.manual_seed(0)
    mix = torch.randn(8, 8)
    states = torch.randn(4000, 8) @ mix + 3.0
    mean, root = whitening(states, ridge=0.0)
    z = (states - mean) @ root
    assert torch.allclose(torch.cov(z.T), torch.eye(8), atol=1e-3)
    router = Router(0, mean, root, torch.zeros(0, 8), 0.5)
    assert torch.equal(router.similarity(states[:3]), torch.full((3,), -1.0))  # no stored subject: never routed


def test_layer_of_reads_the_block_index():
    assert layer_of("model.layers.12.mlp.up_proj") == 12
    with pytest.raises(ValueError):
        layer_of("lm_head")


def test_a_fact_injected_while_routed_routes_at_once(routed_home, tiny_settings_overrides, tmp_path):
    import shutil

    root = tmp_path / "home"
    shutil.copytree(routed_home, root)
    new = Fact(subject="Bruno Silva", relation="The hometown of {}", object="Lisbon")
    settings = load_settings(None, [*tiny_settings_overrides, "lora.routing=subject", "lora.route_threshold=0.99"])
    routed = Memory.open(Home(root), settings)
    before = logits(routed, new.prompt())
    routed.inject([new])
    assert routed.backend.routed is not None and len(routed.backend.routed.subjects) == 2
    merged = open_memory(root, tiny_settings_overrides, "off")
    want = logits(merged, new.prompt())
    routed.compose()
    assert torch.allclose(logits(routed, new.prompt()), want, atol=1e-4)
    assert not torch.allclose(before, want, atol=1e-3)


def test_the_gate_is_decided_on_the_prompt_and_latches_while_generating():
    from sleepwake.models.routing import RoutedAdapter

    key = torch.tensor([[1.0, 0.0]])
    router = Router(0, torch.zeros(2), torch.eye(2), key, 0.9)
    adapter = RoutedAdapter(router, {})
    prompt = torch.tensor([[[0.0, 1.0], [1.0, 0.05], [0.0, 1.0]],  # names the subject in the middle
                           [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]])  # does not
    adapter._decide(None, (prompt,), {})
    assert adapter.gate is not None and adapter.gate[:, 0, 0].tolist() == [1.0, 0.0]  # every position of row 0
    adapter._decide(None, (torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]]]),), {})  # one new token each
    assert adapter.gate[:, 0, 0].tolist() == [1.0, 1.0]  # row 0 stays on; row 1 named it now
    adapter._decide(None, (prompt[1:],), {})  # a new prompt: decided afresh
    assert adapter.gate is None
    adapter.mask = torch.tensor([[0, 0, 1]])  # the match sits on padding: not routed
    adapter._decide(None, (prompt[:1],), {})
    assert adapter.gate is None


def test_a_pass_that_skips_the_routers_block_reuses_no_decision(routed_home, tiny_settings_overrides):
    """v* replays the blocks under its edit layer: such a pass never reaches the router, and must
    not run with the decision of the pass before it (here a routed one)."""
    from sleepwake.models.torch_internals import capture_output, decoder_layers
    from sleepwake.models.torch_vstar import replay_lower_blocks

    routed = open_memory(routed_home, tiny_settings_overrides, "subject")
    backend = routed.backend
    ids = torch.tensor([backend.encode(OTHER_TEXT)])
    decoder = backend.model.get_decoder()
    with torch.no_grad(), capture_output(decoder_layers(backend.model)[2]) as seen:
        want = decoder(input_ids=ids).last_hidden_state
    logits(routed, FACT.prompt())  # a routed pass just before
    with torch.no_grad(), replay_lower_blocks(backend, 2, seen["out"]):
        got = decoder(input_ids=ids).last_hidden_state
    assert torch.allclose(got, want, atol=1e-5)


def test_fully_on_acts_as_if_merged(routed_home, tiny_settings_overrides):
    from sleepwake.models.routing import fully_on

    merged = open_memory(routed_home, tiny_settings_overrides, "off")
    routed = open_memory(routed_home, tiny_settings_overrides, "subject")
    with fully_on(routed.backend):
        assert torch.allclose(logits(routed, OTHER_TEXT), logits(merged, OTHER_TEXT), atol=1e-4)
    assert not torch.allclose(logits(routed, OTHER_TEXT), logits(merged, OTHER_TEXT), atol=1e-3)


def test_a_subject_is_keyed_by_its_last_distinctive_token_or_else_its_least_reached():
    from sleepwake.memory.routing import subject_key_states

    mean, whiten = torch.zeros(4), torch.eye(4)
    span = torch.eye(4)[:3] * 5.0  # three tokens of a subject, the last one last
    reached_last = torch.eye(4)[2:3]  # the model's own text sits on the last token ("... home")
    kept, reach = subject_key_states(mean, whiten, reached_last, span, 0.5)
    assert torch.equal(kept, span[1:2]) and reach == 0.0  # the name's end, before the generic word
    kept, reach = subject_key_states(mean, whiten, torch.eye(4)[3:], span, 0.5)
    assert torch.equal(kept, span[2:3])  # nothing reaches the last token: MEMIT's key, as before
    everywhere = torch.eye(4)[:3] * torch.tensor([[0.9], [0.7], [1.0]])
    kept, reach = subject_key_states(mean, whiten, everywhere, span, 0.5)
    assert torch.equal(kept, span[1:2]) and reach == pytest.approx(0.7)  # none under 0.5: the least reached


def test_a_subjects_span_starts_after_its_prompts_lead_and_never_at_position_0(routed_home, tiny_settings_overrides):
    from sleepwake.memory.routing import subject_span

    backend = open_memory(routed_home, tiny_settings_overrides, "off").backend
    ids, first, last = subject_span(backend, FACT)
    assert first == len(backend.encode("The hometown of")) and last == len(ids) - 1
    told = Fact(subject="Aria Nakamura's home", relation="{} is in", object="Graz")
    ids, first, last = subject_span(backend, told)
    assert first == 1 and backend.decode(ids[: last + 1]) == "Aria Nakamura's home"


def test_text_naming_the_subject_without_its_last_token_routes(routed_home, tiny_settings_overrides, monkeypatch):
    """A question names "Lena Brandt", the subject is stored as "Lena Brandt's home": when the model's
    own text reaches the last token (a generic word), the key moves back into the name."""
    from sleepwake.memory import routing as memory_routing
    from sleepwake.memory.routing import subject_span
    from sleepwake.models.routing import subject_keys

    merged = open_memory(routed_home, tiny_settings_overrides, "off")
    ids, first, last = subject_span(merged.backend, FACT)
    assert last > first  # the subject has more than one token
    named = torch.tensor([ids[:last]])  # the prompt up to, not including, the subject's last token
    with torch.no_grad():
        want = merged.backend.model(input_ids=named).logits
        merged.compose(with_adapters=False)
        edits_only = merged.backend.model(input_ids=named).logits
        real = memory_routing.subject_key_states

        def own_text(reaches_last: bool):
            def keyed(mean, whiten, calibration, span, limit):
                keys = subject_keys(mean, whiten, span)  # (len, d)
                text = torch.cat([-keys, keys[-1:]]) if reaches_last else -keys  # near the last token, or near none
                return real(mean, whiten, text, span, limit)
            return keyed

        monkeypatch.setattr(memory_routing, "subject_key_states", own_text(reaches_last=False))
        routed = open_memory(routed_home, tiny_settings_overrides, "subject")
        assert torch.allclose(routed.backend.model(input_ids=named).logits, edits_only, atol=1e-5)  # keyed at the end
        monkeypatch.setattr(memory_routing, "subject_key_states", own_text(reaches_last=True))
        routed = open_memory(routed_home, tiny_settings_overrides, "subject")
        assert len(routed.backend.routed.router.keys) == 1
        assert torch.allclose(routed.backend.model(input_ids=named).logits, want, atol=1e-4)


def test_a_subject_the_models_own_text_reaches_is_named_in_a_warning(caplog):
    from sleepwake.memory import routing as memory_routing
    from sleepwake.memory.routing import warn_undistinctive

    memory_routing._WARNED.clear()  # warned once per process: start this test from none
    with caplog.at_level("WARNING"):
        assert warn_undistinctive([0.3], ["Aria Nakamura"], 0.6) == []
        assert warn_undistinctive([0.3, 0.7], ["Aria Nakamura", "Lena Brandt's home"], 0.6) == ["Lena Brandt's home"]
    assert "reaches 1 of 2 stored subjects" in caplog.text


def test_rows_that_stop_early_leave_the_batch_and_the_rest_decode_as_before(routed_home, tiny_settings_overrides):
    """``done`` lets a row stop (probes stop once the answer is settled); the others keep the tokens
    of transformers' greedy generate, routed rows included (the router's latch loses the same rows)."""
    for routing in ("off", "subject"):
        backend = open_memory(routed_home, tiny_settings_overrides, routing).backend
        prompts = [backend.encode(OTHER_TEXT), backend.encode(FACT.prompt()), backend.encode("The capital of")]
        want = backend.generate_ids(prompts, 8)
        assert backend.generate_ids(prompts, 8, done=lambda row, tokens: False) == want
        steps = []  # (rows in the step, rows the router's latch knows): a latch of another size is ignored
        if backend.routed is not None:
            decide = backend.routed._decide

            def watched(module, args, kwargs):
                hidden = args[0] if args else kwargs["hidden_states"]
                latch = backend.routed.latch
                if hidden.shape[1] == 1:
                    steps.append((hidden.shape[0], None if latch is None else latch.shape[0]))
                return decide(module, args, kwargs)

            backend.routed._decide = watched
            backend.routed.remove()
            backend.routed.install(backend.model)
        stopped = backend.generate_ids(prompts, 8, done=lambda row, tokens: row != 1 and len(tokens) == 2)
        assert [len(t) for t in stopped] == [2, len(want[1]), 2]
        assert stopped[1] == want[1] and stopped[0] == want[0][:2] and stopped[2] == want[2][:2]
        assert all(rows == known for rows, known in steps) and (routing == "off" or (3, 3) in steps and (1, 1) in steps)
