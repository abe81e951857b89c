"""Every command on a Llama-family checkpoint: a tiny random transformers LlamaForCausalLM (GQA,
untied head) and Qwen2ForCausalLM (q/k/v biases, tied head) saved to a directory, used as --init by
sft, dpo (live, precomputed and LoRA's adapters-off reference, and with --fused-linear), simpo,
orpo, kto, reward-model, eval and sample; each trained model's hf/ loads in transformers with our
logits."""

import json
import warnings

import pytest
import torch
import transformers

import data
import train
from llama import Llama
from plumbing.checkpoint import load_model
from test_train import write_preferences

SHAPE = dict(vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
             bos_token_id=256, eos_token_id=256)
COMMON = ["--tokenizer", "bytes", "--steps", "2", "--batch-size", "4", "--max-length", "48",
          "--heldout-fraction", "0.25", "--eval-every", "2", "--device", "cpu"]


def save_hf(model, directory):
    """transformers' save_pretrained without its warnings and progress bars."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.utils.logging.disable_progress_bar()
        model.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def checkpoint(request, tmp_path_factory):
    """(model_type, the directory of a tiny random transformers model, a preference file)."""
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "llama":
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPE,
                                                                    tie_word_embeddings=False))
    else:
        hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**SHAPE,
                                                                    tie_word_embeddings=True))
    return request.param, save_hf(hf, tmp / "hf-init"), write_preferences(tmp / "prefs.jsonl")


def transformers_logits(directory, idx):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():
        return hf(idx).logits


def assert_exported_like_ours(out_dir, vocab_size=257):
    """out_dir/hf loads in transformers and gives the logits of out_dir's ckpt.pt, a Llama."""
    ours = load_model(str(out_dir)).eval()
    assert isinstance(ours, Llama)
    idx = torch.randint(0, vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(idx)
    torch.testing.assert_close(transformers_logits(str(out_dir / "hf"), idx), expected,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("command, flags", [
    ("sft", []),
    ("dpo", ["--reference", "live"]),
    ("dpo", ["--reference", "precompute", "--fused-linear"]),
    ("dpo", ["--lora-rank", "4"]),
    ("simpo", []),
    ("orpo", []),
    ("kto", []),
], ids=["sft", "dpo-live", "dpo-precompute-fused-linear", "dpo-lora", "simpo", "orpo", "kto"])
def test_training_commands_take_a_llama_family_checkpoint(checkpoint, command, flags, tmp_path):
    model_type, init, prefs = checkpoint
    out = tmp_path / command
    assert train.main([command, "--init", init, "--data", prefs, *COMMON, *flags,
                       "--out-dir", str(out)]) == 0
    assert json.loads((out / "hf" / "config.json").read_text())["model_type"] == model_type
    assert_exported_like_ours(out)
    if "--lora-rank" in flags:  # the adapters sit on the seven projections of each block
        saved = torch.load(out / "ckpt.pt", weights_only=False)
        targets = {name.rsplit(".", 1)[-1] for name in saved["lora"]["targets"]}
        assert targets == set(Llama.lora_targets)


def test_reward_model_eval_and_sample_take_a_llama_family_checkpoint(checkpoint, tmp_path, capsys):
    _, init, prefs = checkpoint
    assert train.main(["reward-model", "--init", init, "--data", prefs, *COMMON,
                       "--eval-samples", "0", "--out-dir", str(tmp_path / "rm")]) == 0
    sampling = ["--tokenizer", "bytes", "--max-new-tokens", "8", "--device", "cpu"]
    assert train.main(["eval", "--init", init, "--reference-init", init, "--num-prompts", "4",
                       *sampling, "--out-dir", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["kl_policy_reference"] == pytest.approx(0.0, abs=1e-4)  # the same model
    capsys.readouterr()
    assert train.main(["sample", "--init", init, "--prompt", "The film", *sampling]) == 0
    assert "The film" in capsys.readouterr().out


def test_dpo_on_conversations_with_the_checkpoints_tokenizer_and_chat_template(tmp_path, capsys):
    """A tiny Qwen2 beside its own tokenizer.json and ChatML template (as a Hub checkpoint ships
    them): dpo on conversational rows uses both, and hf/ is a checkpoint transformers loads with the
    same tokenizer; the same --init with another --tokenizer is a one-line error."""
    from test_hf_tokenizer import conversation, train_tokenizer, write_checkpoint, write_rows

    spec = json.loads(train_tokenizer("qwen2").to_str())
    directory = write_checkpoint(tmp_path / "qwen2", spec)
    vocab_size = data.get_tokenizer(directory).n_vocab
    torch.manual_seed(0)
    hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        **{**SHAPE, "vocab_size": vocab_size, "bos_token_id": None, "eos_token_id": None},
        tie_word_embeddings=True))
    save_hf(hf, directory)
    rows = write_rows(tmp_path / "rows.jsonl", [
        conversation(user=f"Is {i} even?", chosen=f"{'Yes' if i % 2 == 0 else 'No'}.",
                     rejected="Maybe.") for i in range(16)])
    out = tmp_path / "dpo"
    flags = ["--data", rows, "--steps", "2", "--batch-size", "4", "--max-length", "64",
             "--heldout-fraction", "0.25", "--eval-every", "2", "--device", "cpu"]
    assert train.main(["dpo", "--init", directory, "--tokenizer", directory, *flags,
                       "--out-dir", str(out)]) == 0
    assert "chat template" in capsys.readouterr().out
    assert_exported_like_ours(out, vocab_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.AutoTokenizer.from_pretrained(str(out / "hf"))
    text = "Is 12 even? Yes, 12 is even."
    assert theirs(text)["input_ids"] == data.get_tokenizer(str(out / "hf")).encode_ordinary(text)
    assert theirs.eos_token == "<|im_end|>"

    assert train.main(["dpo", "--init", directory, "--tokenizer", "bytes", *flags,
                       "--out-dir", str(tmp_path / "wrong")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --init") and "pass --tokenizer" in err and err.count("\n") == 1


def break_checkpoint(directory, damage):
    """Damage a saved checkpoint directory in one of the ways a download can go wrong."""
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text())
    if damage == "another architecture":
        config["model_type"] = "mistral"
        config["architectures"] = ["MistralForCausalLM"]
    elif damage == "a shape mismatch":
        config["intermediate_size"] = 2 * config["intermediate_size"]
    elif damage == "a missing shard":
        (directory / "model-00002-of-00003.safetensors").unlink()
    elif damage == "a WordPiece tokenizer":
        from tokenizers import Tokenizer, models
        Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(
            str(directory / "tokenizer.json"))
    config_file.write_text(json.dumps(config))


@pytest.mark.parametrize("damage, words", [
    ("another architecture", "mistral"),
    ("a shape mismatch", "shape"),
    ("a missing shard", "model-00002-of-00003.safetensors"),
    ("a WordPiece tokenizer", "WordPiece"),
])
def test_a_broken_checkpoint_is_one_line_and_nothing_is_written(damage, words, tmp_path, capsys):
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPE))
    directory = tmp_path / "checkpoint"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.utils.logging.disable_progress_bar()
        hf.save_pretrained(directory, max_shard_size="60KB")
    assert (directory / "model-00003-of-00003.safetensors").is_file()  # three shards
    break_checkpoint(directory, damage)
    tokenizer = str(directory) if damage == "a WordPiece tokenizer" else "bytes"
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    out = tmp_path / "out"
    assert train.main(["dpo", "--init", str(directory), "--tokenizer", tokenizer, "--data", prefs,
                       "--steps", "1", "--device", "cpu", "--out-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err, err
    assert not out.exists()
