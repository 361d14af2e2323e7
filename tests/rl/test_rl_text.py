"""Text tasks: tokenizer, chat template, left padding, dropout off, sync == async."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from surge.rl import (
    Generator,
    HFCausalLM,
    RLConfig,
    RLError,
    TextTask,
    Trainer,
    completion_logprobs,
    gsm8k_reward,
    load_rows,
    train_tokenizer,
    word_problems,
)
from surge.rl._text import SIMPLE_CHAT_TEMPLATE, left_pad

transformers = pytest.importorskip("transformers")

ROWS = word_problems(60, seed=0, max_operand=3, kinds=("add",))


def _tokenizer(chat_template: str | None = None) -> Any:
    texts = [r["prompt"] + " #### " + r["answer"] for r in ROWS]
    return train_tokenizer(texts, vocab_size=300, chat_template=chat_template)


def _policy(vocab: int, seed: int = 0, dropout: float = 0.1) -> HFCausalLM:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=vocab,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=1,
        eos_token_id=1,
    )
    return HFCausalLM(transformers.GPT2LMHeadModel(config))  # from a config: no download


def _task(**kw: Any) -> TextTask:
    return TextTask(
        ROWS, _tokenizer(), gsm8k_reward, max_new_tokens=kw.pop("max_new_tokens", 4), **kw
    )


def _trainer(task: TextTask, **overrides: Any) -> Trainer:
    cfg: dict[str, Any] = {
        "prompts_per_batch": 3,
        "group_size": 4,
        "generator_threads": 1,
        "trainer_threads": 1,
        "weight_sync_timeout": 60.0,
    }
    return Trainer(_policy(task.vocab_size), task, RLConfig(**(cfg | overrides)), device="cpu")


def test_prompts_have_different_lengths_and_decode_back() -> None:
    task = _task()
    lengths = {len(p) for p in task.prompt_ids}
    assert len(lengths) > 1  # the point of padding
    assert task.decode(task.prompt_ids[0]) == ROWS[0]["prompt"]
    assert task.pad_id == 0 and task.eos_id == 1


def test_chat_template_is_applied_where_the_tokenizer_has_one() -> None:
    plain = TextTask(ROWS, _tokenizer(), gsm8k_reward)
    chat = TextTask(ROWS, _tokenizer(SIMPLE_CHAT_TEMPLATE), gsm8k_reward)
    q = ROWS[0]["prompt"]
    assert plain.prompt_text(q) == q
    assert chat.prompt_text(q) == f"user: {q}\nassistant:"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": q}]
    assert chat.prompt_text(messages) == f"system: Be brief.\nuser: {q}\nassistant:"
    off = TextTask(ROWS, _tokenizer(SIMPLE_CHAT_TEMPLATE), gsm8k_reward, chat_template=False)
    assert off.prompt_text(q) == q


def test_reward_receives_the_decoded_completion_and_the_other_columns() -> None:
    seen: list[tuple[Any, str, dict[str, Any]]] = []

    def reward(prompt: Any, completion: str, **row: Any) -> float:
        seen.append((prompt, completion, row))
        return 0.5

    rows = [{"prompt": "2 + 3 =", "answer": "5", "source": "hand"}]
    task = TextTask(rows, _tokenizer(), reward)
    ids = task.tokenizer.encode(" #### 5", add_special_tokens=False)
    assert task.reward(task.prompt_ids[0], ids) == 0.5
    assert seen == [("2 + 3 =", " #### 5", {"answer": "5", "source": "hand"})]


def test_left_padded_batch_gives_each_sequence_its_own_logprobs() -> None:
    task = _task()
    policy = _policy(task.vocab_size).eval()
    prompts = [task.prompt_ids[i] for i in range(6)]
    assert len({len(p) for p in prompts}) > 1
    completions = torch.randint(2, task.vocab_size, (6, 5))
    with torch.no_grad():
        batched, _ = completion_logprobs(policy, prompts, completions, task.pad_id)
        for i, p in enumerate(prompts):
            alone, _ = completion_logprobs(policy, [p], completions[i : i + 1], task.pad_id)
            torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_cached_padded_sampling_matches_the_uncached_forward_pass() -> None:
    task = _task()
    policy = _policy(task.vocab_size).eval()

    class NoCache(torch.nn.Module):  # forward only: the generator reruns the prefix
        def forward(
            self, tokens: torch.Tensor, attention_mask: Any = None, position_ids: Any = None
        ) -> torch.Tensor:
            out: torch.Tensor = policy(tokens, attention_mask, position_ids)
            return out

    def sample(model: torch.nn.Module) -> list[Any]:
        gen = Generator(model, task, group_size=3, seed=5, refresh=lambda mv: 0)
        return gen.generate([0, 1, 2, 3])

    for cached, uncached in zip(sample(policy), sample(NoCache()), strict=True):
        assert torch.equal(cached.completions, uncached.completions)
        torch.testing.assert_close(
            cached.behaviour_logprobs, uncached.behaviour_logprobs, atol=1e-5, rtol=1e-5
        )


def test_a_model_without_attention_mask_gets_a_clear_error_on_padded_prompts() -> None:
    from surge.rl import TinyLM, TinyLMConfig

    task = _task()
    model = TinyLM(TinyLMConfig(vocab_size=task.vocab_size, max_len=64))
    gen = Generator(model, task, group_size=2, seed=0, refresh=lambda mv: 0)
    tickets = list(range(8))  # enough tickets to draw prompts of different lengths
    with pytest.raises(RLError, match="HINT: use HFCausalLM"):
        gen.generate(tickets)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_on_policy_importance_weights_are_one_with_gpt2_dropout_on(checkpointing: bool) -> None:
    # A reward that differs within every group: the trainer skips completions with zero
    # advantage, and with none left the ESS would be 1 without computing anything.
    task = TextTask(ROWS, _tokenizer(), _length_reward, max_new_tokens=4)
    policy = _policy(task.vocab_size, dropout=0.1)  # GPT-2's default dropout
    gen = Generator(policy.eval(), task, group_size=4, seed=1, refresh=lambda mv: 0)
    rollouts = gen.generate([0, 1, 2])
    prompts = [r.prompt for r in rollouts for _ in range(4)]
    completions = torch.cat([r.completions for r in rollouts])
    mask = torch.cat([r.mask for r in rollouts])
    behaviour = torch.cat([r.behaviour_logprobs for r in rollouts])
    trainer = _trainer(task, mode="sync", gradient_checkpointing=checkpointing)
    trainer.model.load_state_dict(policy.state_dict())
    trainer.model.train()  # the trainer must switch dropout off itself
    metrics = trainer._update(rollouts)
    moved = trainer.model.state_dict()
    assert any(not torch.equal(moved[k], v) for k, v in policy.state_dict().items())  # it trained
    assert metrics["ess"] == pytest.approx(1.0, abs=1e-9)
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-9)
    # What the old code did (train mode: dropout on) is visibly off-policy.
    policy.train()
    torch.manual_seed(0)
    with torch.no_grad():
        noisy, _ = completion_logprobs(policy, prompts, completions, task.pad_id)
    w = torch.exp(noisy - behaviour)[mask]
    assert float((w - 1).abs().max()) > 0.05  # dropout noise, not a policy change


def test_gradient_checkpointing_recomputes_and_gives_the_same_gradient() -> None:
    task = TextTask(ROWS, _tokenizer(), _length_reward, max_new_tokens=4)  # signal in every group
    gen = Generator(
        _policy(task.vocab_size).eval(), task, group_size=4, seed=1, refresh=lambda mv: 0
    )
    rollouts = gen.generate([0, 1, 2])
    grads, block_calls = [], []
    for checkpointing in (False, True):
        trainer = _trainer(task, mode="sync", gradient_checkpointing=checkpointing)
        calls = [0]
        # Count runs of a layer inside the checkpointed block (module hooks do not fire
        # in the recomputation, so wrap its forward).
        mlp = trainer.model.model.transformer.h[0].mlp
        mlp_forward = mlp.forward

        def counted(
            *args: Any, _forward: Any = mlp_forward, _calls: list[int] = calls, **kwargs: Any
        ) -> Any:
            _calls[0] += 1
            return _forward(*args, **kwargs)

        mlp.forward = counted
        metrics = trainer._update(rollouts)
        assert metrics["ess"] == pytest.approx(1.0, abs=1e-9)
        grads.append({n: p.grad.clone() for n, p in trainer.model.named_parameters()})
        block_calls.append(calls[0])
        assert not trainer.model.training  # left in the mode the generator samples in
    assert block_calls[1] > block_calls[0]  # the backward pass ran the block again
    assert any(float(g.abs().max()) > 0 for g in grads[0].values())  # it had a gradient
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_gradient_checkpointing_on_a_model_without_it_is_a_clear_error() -> None:
    from surge.rl import ReverseDigits, TinyLM, TinyLMConfig

    task = ReverseDigits(length=3)
    model = TinyLM(TinyLMConfig(vocab_size=task.vocab_size))
    with pytest.raises(ValueError, match=r"gradient_checkpointing_enable.*HINT"):
        Trainer(model, task, RLConfig(gradient_checkpointing=True), device="cpu")


def test_staleness_zero_async_equals_sync_bit_for_bit_on_a_text_task() -> None:
    task = TextTask(ROWS, _tokenizer(), _length_reward, max_new_tokens=4)
    sync = _trainer(task, mode="sync", beta=0.05, loss_type="grpo")
    sync_stats = sync.train(3)
    lagged = _trainer(task, mode="async", max_staleness=0, beta=0.05, loss_type="grpo")
    async_stats = lagged.train(3)
    for a, b in zip(sync_stats, async_stats, strict=True):
        assert a.reward_mean == b.reward_mean and a.tickets == b.tickets
        assert a.ess == pytest.approx(1.0, abs=1e-9)
    a_state, b_state = sync.model.state_dict(), lagged.model.state_dict()
    initial = _policy(task.vocab_size).state_dict()
    assert any(not torch.equal(a_state[k], initial[k]) for k in a_state)  # it trained
    assert any(s.ref_kl > 0 for s in sync_stats[1:])  # the KL term was live
    for name in a_state:
        assert torch.equal(a_state[name], b_state[name]), name


def _length_reward(prompt: Any, completion: str, **row: Any) -> float:
    return float(len(completion))  # varies from token to token: every group has a signal


def test_mask_truncated_completions_takes_cut_completions_out_of_the_loss() -> None:
    # One new token: a completion is either EOS at once (ended) or cut (truncated); this
    # untrained policy never says EOS first here, so every completion is cut.
    task = TextTask(ROWS, _tokenizer(), _length_reward, max_new_tokens=1)
    results = {}
    for masked in (False, True):
        trainer = _trainer(task, mode="sync", mask_truncated_completions=masked)
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        stats = trainer.train(1)[0]
        after = trainer.model.state_dict()
        results[masked] = any(not torch.equal(before[k], after[k]) for k in before)
        assert stats.tokens == 12  # one generated token per completion, none ended
    assert results == {False: True, True: False}


def test_online_dpo_trains_on_a_text_task() -> None:
    task = TextTask(ROWS, _tokenizer(), _length_reward, max_new_tokens=4)
    trainer = _trainer(task, mode="async", algorithm="online_dpo", max_staleness=1)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    history = trainer.train(3)
    assert all(torch.isfinite(torch.tensor(s.loss)) for s in history)
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_entropy_is_reported_every_step() -> None:
    task = _task()
    history = _trainer(task, mode="sync").train(2)
    assert all(s.entropy > 0 for s in history)


# -- loading rows --------------------------------------------------------------------------


def test_jsonl_and_parquet_and_an_iterable_load_through_one_path(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "1 + 1 =", "answer": "2"}, {"prompt": "2 + 2 =", "answer": "4"}]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)

    class Dataset:  # what a `datasets.Dataset` looks like to the loader: dict rows
        def __iter__(self) -> Any:
            return iter(rows)

    for source in (jsonl, parquet, Dataset(), rows):
        assert load_rows(source, columns=("prompt", "answer")) == rows


def test_a_missing_column_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b"}\n')
    with pytest.raises(RLError, match=r"d\.jsonl, line 2: missing column 'answer'.*HINT"):
        load_rows(path, columns=("prompt", "answer"))
    path.write_text('{"prompt": "a"}\nnot json\n')
    with pytest.raises(RLError, match=r"line 2: not valid JSON"):
        load_rows(path)


def test_left_pad_pads_on_the_left_and_skips_the_mask_when_equal() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask is not None and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert left_pad([[1, 2], [3, 4]], pad_id=0)[1] is None


def test_lora_trains_only_the_adapters() -> None:
    peft = pytest.importorskip("peft")
    task = TextTask(ROWS, _tokenizer(), _length_reward, max_new_tokens=4)
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=task.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2
    )
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True)
    policy = HFCausalLM(peft.get_peft_model(transformers.GPT2LMHeadModel(config), lora))
    cfg = RLConfig(mode="async", max_staleness=1, prompts_per_batch=3, group_size=4,
                   generator_threads=1, trainer_threads=1)  # fmt: skip
    trainer = Trainer(policy, task, cfg, device="cpu")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train(2)
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)


def test_the_kl_reference_follows_a_warm_up() -> None:
    task = _task()
    trainer = _trainer(task, mode="sync", beta=0.1)
    assert trainer.ref_model is not None
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.01)  # a warm-up, in miniature
    ref, now = trainer.ref_model.state_dict(), trainer.model.state_dict()
    assert not all(torch.equal(ref[k], now[k]) for k in now)
    trainer.reset_reference()
    ref = trainer.ref_model.state_dict()
    assert all(torch.equal(ref[k], now[k]) for k in now)
