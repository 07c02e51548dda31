"""Every command the README shows is exercised by a named test or notebook.

``COVERAGE`` maps each command (from the README's ``bash`` blocks, its inline code that starts with a
command name, and its ``python`` blocks by their first line) to the tests that run it and to what they
change to run it here. A new README command without an entry, an entry for a command the README no longer
shows, or an entry naming a test that does not exist fails this file.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from test_notebooks import NOTEBOOKS

ROOT = Path(__file__).resolve().parents[2]
COMMAND = re.compile(r"(make |contrastlab-|python |wandb |torchrun |srun |source |PYTHONPATH=|RUN_ID=)")

# command -> (how it is run here, tests or notebooks that run it)
COVERAGE: dict[str, tuple[str, tuple[str, ...]]] = {
    # --- quick start -----------------------------------------------------------------------------------
    "make train": ("as written", ("tests/docs/test_readme_quickstart.py::test_make_train_reaches_the_promised_knn",)),
    "make test": (
        "CI runs it (.ci/run); this suite is what it runs",
        ("tests/docs/test_readme.py::test_readme_shows_the_two_commands",),
    ),
    'make train ARGS="loss.temperature=0.1 encoder=timm encoder.name=resnet18"': (
        "ARGS gains debug=fast logger=csv and a run dir",
        ("tests/docs/test_readme_recipes.py::test_make_train_passes_overrides_through",),
    ),
    "make setup": (
        "CI runs it on a fresh clone (make test depends on it)",
        ("tests/docs/test_readme.py::test_readme_shows_the_two_commands",),
    ),
    "source .venv/bin/activate": (
        "shell set-up; tests call the venv's console scripts through PATH",
        ("tests/docs/test_readme_recipes.py::test_joblib_sweep",),
    ),
    "contrastlab-train [overrides]": ("synopsis", ("tests/objectives/test_train_simclr.py::test_variants_debug_fast",)),
    "contrastlab-train": (
        "synopsis",
        ("tests/docs/test_readme_quickstart.py::test_make_train_reaches_the_promised_knn",),
    ),
    "contrastlab-eval ckpt_path=...": (
        "synopsis",
        ("tests/cli/test_eval_cli.py::test_eval_prints_and_writes_the_logged_knn_top1",),
    ),
    "contrastlab-eval": ("synopsis", ("tests/cli/test_eval_cli.py::test_eval_prints_and_writes_the_logged_knn_top1",)),
    "contrastlab-export": ("synopsis", ("tests/cli/test_export.py::test_hf_folder_loads_with_automodel",)),
    "contrastlab-export ckpt_path=... format=...": (
        "synopsis",
        (
            "tests/cli/test_export.py::test_sentence_transformers_folder_encodes_as_contrastlab_embed",
            "tests/cli/test_export.py::test_onnx_text_tower_matches_pytorch",
            "tests/cli/test_export_open_clip.py::test_export_loads_in_open_clip_and_embeds_as_contrastlab_embed",
        ),
    ),
    "contrastlab-mine ckpt_path=... input=...": ("synopsis", ("tests/cli/test_mine.py::test_command",)),
    "contrastlab-shard ...": (
        "synopsis",
        (
            "tests/cli/test_shard_cli.py::test_an_image_folder_becomes_labelled_shards_of_the_target_size",
            "tests/cli/test_shard_cli.py::test_a_caption_table_becomes_caption_shards",
        ),
    ),
    "contrastlab-embed ckpt_path=... [data=...]": (
        "synopsis",
        (
            "tests/cli/test_eval_cli.py::test_embed_and_search",
            "tests/cli/test_embed_search.py::test_clip_embeddings_with_captions_and_text_queries",
        ),
    ),
    "contrastlab-search index=<embed dir> query=...": (
        "synopsis",
        (
            "tests/cli/test_eval_cli.py::test_embed_and_search",
            "tests/cli/test_embed_search.py::test_text_documents_of_a_biencoder",
        ),
    ),
    "contrastlab-compare [sweep or run dirs]": (
        "synopsis",
        (
            "tests/tracking/test_compare.py::test_run_dir_and_nested_dirs",
            "tests/tracking/test_compare.py::test_cli_defaults_to_latest_sweep",
        ),
    ),
    "contrastlab-train <overrides> --cfg job": (
        "with experiment=simclr_cifar10",
        ("tests/config/test_sweep_configs.py::test_cifar10_recipe_cli_cfg_job",),
    ),
    # --- recipes: encoder, loss, sampler ---------------------------------------------------------------
    "contrastlab-train encoder=timm encoder.name=resnet18": (
        "through make train ARGS=..., + debug=fast",
        ("tests/docs/test_readme_recipes.py::test_make_train_passes_overrides_through",),
    ),
    "contrastlab-train encoder=timm encoder.name=convnext_atto encoder.pretrained=true data.image_size=32": (
        "+ debug=fast; no network: the weights come from a Hugging Face cache the test writes (HF_HUB_OFFLINE=1)",
        (
            "tests/docs/test_readme_downloads.py::test_pretrained_convnext_run_from_the_offline_cache",
            "tests/docs/test_readme_downloads.py::test_pretrained_encoder_built_as_training_does_holds_the_cached_weights",
            "tests/docs/test_readme_downloads.py::test_pretrained_without_cached_weights_offline_names_encoder_pretrained",
        ),
    ),
    "contrastlab-train loss.temperature=0.1 optimizer=lars optimizer.lr=0.6 objective.lr_scaling=linear": (
        "+ debug=fast",
        ("tests/docs/test_readme_recipes.py::test_lars_with_linear_lr_scaling",),
    ),
    "contrastlab-train sampler=memory_bank sampler.size=4096": (
        "+ debug=fast",
        ("tests/docs/test_readme_recipes.py::test_memory_bank_of_4096",),
    ),
    "contrastlab-train objective=triplet sampler=semi_hard": (
        "+ debug=fast; every sampler",
        ("tests/objectives/test_triplet_runs.py::test_every_sampler_trains_the_triplet_objective",),
    ),
    "contrastlab-train experiment=triplet_digits": (
        "+ debug=fast",
        ("tests/docs/test_readme_recipes.py::test_triplet_digits_recipe",),
    ),
    "contrastlab-train data=imagefolder data.data_dir=/data/pets augment=simclr data.image_size=64": (
        "+ debug=fast; a folder of PNGs the test writes, data.image_size=16",
        (
            "tests/data/test_data_runs.py::test_labelled_image_folder_run",
            "tests/data/test_data_runs.py::test_unlabelled_image_folder_run_skips_a_corrupt_file",
        ),
    ),
    "contrastlab-train data=cifar10 augment=simclr encoder=resnet18_cifar data.download=true": (
        "+ debug=fast; downloads a tiny real-format archive from a local HTTP mirror",
        (
            "tests/docs/test_readme_downloads.py::test_cifar10_download_fetches_verifies_extracts_trains_and_fetches_only_once",
            "tests/docs/test_readme_downloads.py::test_cifar10_download_with_the_mirror_down_names_the_keys",
        ),
    ),
    "contrastlab-train experiment=simclr_cifar10 trainer=gpu": (
        "no GPU here: refused at start-up in one line; the recipe itself trains with trainer=cpu on tiny files",
        (
            "tests/docs/test_readme_recipes.py::test_gpu_commands",
            "tests/docs/test_readme_recipes.py::test_cifar10_recipe_trains_on_the_cpu",
            "tests/config/test_sweep_configs.py::test_cifar10_recipes_build",
        ),
    ),
    # --- CLIP and text ---------------------------------------------------------------------------------
    "contrastlab-train experiment=clip_shapes": (
        "the recipe at 60 steps",
        (
            "notebooks/04_clip_zero_shot.ipynb",
            "tests/distributed/test_ddp_runs.py::test_one_wandb_run_with_each_step_logged_once",
        ),
    ),
    "contrastlab-train objective=clip data=image_text_csv data.path=/data/coco/captions.csv augment=clip encoder=timm encoder.name=resnet50 text_encoder=hf text_encoder.name=/models/bert-base-uncased": (
        "+ debug=fast; a caption CSV and a 1-layer BERT folder the test writes",
        ("tests/docs/test_readme_recipes.py::test_clip_on_a_caption_table_with_timm_and_hf_towers",),
    ),
    "contrastlab-train experiment=biencoder_text_pairs": (
        "+ debug=fast",
        ("tests/objectives/test_clip_e2e.py::test_biencoder_experiment_on_the_shipped_demo_pairs",),
    ),
    # --- shards -------------------------------------------------------------------------------------
    "contrastlab-shard input=/data/pets output=/data/pets-shards val_fraction=0.1": (
        "an image folder written by the test",
        ("tests/cli/test_shard_cli.py::test_an_image_folder_becomes_labelled_shards_of_the_target_size",),
    ),
    "contrastlab-shard input=captions.csv output=/data/coco-shards val_fraction=0.05": (
        "a caption table written by the test",
        ("tests/cli/test_shard_cli.py::test_a_caption_table_becomes_caption_shards",),
    ),
    "contrastlab-train data=webdataset \"data.urls='/data/pets-shards/train-{000000..000031}.tar'\" data.val_urls=/data/pets-shards/val-000000.tar augment=simclr": (
        "shards written by the test (brace list of its own), tiny images, debug sizes",
        (
            "tests/data/test_shards.py::test_simclr_on_shards_with_two_workers_counts_the_corrupt_sample",
            "tests/training/test_shard_resume.py::test_a_killed_ddp_run_on_shards_resumes_like_an_uninterrupted_one",
        ),
    ),
    "contrastlab-train objective=triplet data=webdataset \"data.urls='/data/pets-shards/train-{000000..000031}.tar'\" data.val_urls=/data/pets-shards/val-000000.tar data.per_class=4 augment=simclr": (
        "shards written by the test, on a resampled stream, debug sizes",
        ("tests/data/test_shards.py::test_triplet_trains_on_class_balanced_batches_of_a_resampled_stream",),
    ),
    "contrastlab-train objective=clip data=webdataset data.content=captions \"data.urls='/data/coco-shards/train-{000000..000099}.tar'\" data.val_urls=/data/coco-shards/val-000000.tar": (
        "caption shards written by the test, debug sizes",
        ("tests/data/test_shards.py::test_clip_on_caption_shards_reports_retrieval_and_zero_shot",),
    ),
    "python benchmarks/data_throughput.py": (
        "toy size: 200 images",
        ("tests/docs/test_benchmarks.py::test_data_throughput_benchmark_runs_at_toy_size",),
    ),
    # --- fine-tune a sentence-transformer ----------------------------------------------------------------
    "contrastlab-train experiment=finetune_text text_encoder.name=sentence-transformers/all-MiniLM-L6-v2 data.path=train.jsonl data.val_path=val.jsonl": (
        "a tiny BERT saved as a sentence-transformers folder by the test instead of the hub model; pairs written by the test",
        ("tests/cli/test_export.py::test_sentence_transformers_folder_encodes_as_contrastlab_embed",),
    ),
    "contrastlab-export ckpt_path=<run>/checkpoints/last.ckpt format=sentence_transformers output_dir=my-model": (
        "on the tiny fine-tuned run; loaded back with SentenceTransformer",
        ("tests/cli/test_export.py::test_sentence_transformers_folder_encodes_as_contrastlab_embed",),
    ),
    "contrastlab-export ckpt_path=<run>/checkpoints/last.ckpt format=onnx output_dir=my-onnx": (
        "on the tiny fine-tuned run; checked with onnxruntime",
        ("tests/cli/test_export.py::test_onnx_text_tower_matches_pytorch",),
    ),
    "python benchmarks/vs_sentence_transformers.py --model <folder or hub name> --pairs stdlib": (
        "--toy: a tiny random model written by the script (the full size needs the real model)",
        ("tests/docs/test_benchmark_vs_st.py::test_the_toy_run_prints_both_rows",),
    ),
    # --- GPUs ---------------------------------------------------------------------------------------
    "python benchmarks/gpu_throughput.py": (
        "--toy on the CPU (no GPU here)",
        ("tests/docs/test_benchmark_gpu_throughput.py::test_toy_run_prints_throughput_and_memory_of_each_case",),
    ),
    "python benchmarks/augment_speed.py": (
        "a quick run at small sizes",
        ("tests/docs/test_benchmark_augment_speed.py::test_quick_run_prints_each_case_and_the_verdict",),
    ),
    # --- pretrained CLIP, BEIR, mining -----------------------------------------------------------------
    "contrastlab-train objective=clip encoder=open_clip encoder.model=ViT-B-32 encoder.pretrained=laion2b_s34b_b79k data=image_text_csv data.path=captions.csv optimizer.lr=1e-5 data.batch_size=128 callbacks.knn=null": (
        "a tiny random-init open_clip model saved to a file by the test instead of the laion2b download "
        "(tags: cache lookup tested offline); caption table written by the test",
        (
            "tests/cli/test_export_open_clip.py::test_training_logs_the_metrics_and_their_init_values",
            "tests/encoders/test_open_clip.py::test_a_tag_that_is_not_cached_offline_names_the_key_and_the_cache",
            "tests/encoders/test_open_clip.py::test_objective_features_equal_open_clip_encode_image_and_text",
        ),
    ),
    "contrastlab-eval ckpt_path=<run>/checkpoints/last.ckpt eval=[objective] eval.objective.templates=openai_imagenet": (
        "on the tiny open_clip run, with an image folder written by the test",
        ("tests/cli/test_export_open_clip.py::test_eval_reports_zero_shot_on_an_image_folder_with_openai_templates",),
    ),
    "contrastlab-export ckpt_path=<run>/checkpoints/last.ckpt format=open_clip output_dir=my-clip": (
        "on the tiny open_clip run; loaded back with open_clip.create_model_and_transforms",
        ("tests/cli/test_export_open_clip.py::test_export_loads_in_open_clip_and_embeds_as_contrastlab_embed",),
    ),
    "contrastlab-train experiment=biencoder_text_pairs data=beir data.data_dir=~/data/beir/scifact": (
        "a small BEIR folder written by the test, tiny text tower",
        ("tests/data/test_beir.py::test_train_command_on_a_beir_folder",),
    ),
    "contrastlab-mine ckpt_path=<run>/checkpoints/last.ckpt input=~/data/beir/scifact split=train output=mined.jsonl": (
        "a small BEIR folder written by the test; the negatives checked against a brute-force reference",
        (
            "tests/cli/test_mine.py::test_command",
            "tests/cli/test_mine.py::test_beir_negatives_skip_positives_and_the_query_itself",
        ),
    ),
    # --- evaluate, export, search ----------------------------------------------------------------------
    "contrastlab-eval ckpt_path=outputs/simclr/runs/<run>/checkpoints/last.ckpt": (
        "a debug=fast run's checkpoint",
        ("tests/cli/test_eval_cli.py::test_eval_prints_and_writes_the_logged_knn_top1",),
    ),
    "contrastlab-eval ckpt_path=... eval=[knn,health] logger=wandb": (
        "as written",
        ("tests/cli/test_eval_cli.py::test_eval_of_chosen_metrics_into_the_runs_wandb_run",),
    ),
    "contrastlab-eval ckpt_path=... random_init=true": (
        "in-process",
        ("tests/cli/test_eval_cli.py::test_eval_refuses_bad_checkpoints_clearly",),
    ),
    "contrastlab-embed ckpt_path=... output_dir=emb/": (
        "as written",
        ("tests/cli/test_eval_cli.py::test_embed_and_search",),
    ),
    "contrastlab-search index=emb/ query=idx:12 k=5": (
        "as written, and image/text queries",
        (
            "tests/cli/test_eval_cli.py::test_embed_and_search",
            "tests/cli/test_embed_search.py::test_clip_embeddings_with_captions_and_text_queries",
        ),
    ),
    # --- sweeps --------------------------------------------------------------------------------------------
    "contrastlab-train -m loss.temperature=0.1,0.2,0.5 sampler=in_batch,memory_bank": (
        "the same grid at 2 x 2 with debug=fast",
        (
            "notebooks/03_compare_runs.ipynb",
            "tests/tracking/test_sweep.py::test_jobs_complete_and_the_failure_is_recorded",
        ),
    ),
    "contrastlab-compare": (
        "as written (latest sweep)",
        (
            "tests/tracking/test_compare.py::test_cli_defaults_to_latest_sweep",
            "tests/tracking/test_sweep.py::test_compare_on_the_sweep",
        ),
    ),
    "contrastlab-train hparams_search=optuna hydra.sweeper.n_trials=30": (
        "n_trials=2, then resumed",
        ("tests/tracking/test_sweep_optuna.py::test_optuna_search_reports_the_best_and_resumes",),
    ),
    "contrastlab-train -m hydra/launcher=joblib hydra.launcher.n_jobs=2 loss.temperature=0.1,0.5": (
        "+ debug=fast",
        ("tests/docs/test_readme_recipes.py::test_joblib_sweep",),
    ),
    "contrastlab-train -m hydra/launcher=submitit_slurm trainer=ddp trainer.devices=4 trainer.num_nodes=2 hydra.launcher.partition=gpu hydra.launcher.timeout_min=1440 loss.temperature=0.1,0.2": (
        "on a fake one-machine SLURM (tests/docs/fake_slurm), trainer=ddp_cpu devices=2 nodes=1, debug=fast",
        (
            "tests/docs/test_readme_slurm.py::test_readme_slurm_sweep",
            "tests/tracking/test_launchers.py::test_slurm_launcher_matches_the_ddp_trainer",
        ),
    ),
    # --- multi-GPU, multi-node -----------------------------------------------------------------------------
    "contrastlab-train trainer=ddp trainer.devices=8": (
        "no GPU here: refused at start-up in one line; the config is checked for 8 GPUs x 4 nodes",
        (
            "tests/docs/test_readme_recipes.py::test_gpu_commands",
            "tests/objectives/test_scaling.py::test_gpu_trainers_need_the_gpus_they_ask_for",
            "tests/objectives/test_scaling.py::test_ddp_trainer_config_for_gpus_and_nodes",
        ),
    ),
    "RUN_ID=simclr-$(date +%F)-a": (
        "the run id of the torchrun test",
        ("tests/docs/test_readme_torchrun.py::test_two_nodes_join_one_world_of_two_ranks",),
    ),
    "torchrun --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-id=$RUN_ID --rdzv-endpoint=$HOST:29500 -m contrastlab.cli.train trainer=ddp trainer.devices=8 trainer.num_nodes=2 hydra.run.dir=outputs/simclr/runs/$RUN_ID": (
        "two torchrun 'nodes' on localhost, 1 process each, trainer=ddp_cpu devices=1 nodes=2, debug=fast",
        (
            "tests/docs/test_readme_torchrun.py::test_two_nodes_join_one_world_of_two_ranks",
            "tests/docs/test_readme_torchrun.py::test_only_rank_0_writes_logs_configs_and_checkpoints",
            "tests/docs/test_readme_torchrun.py::test_same_result_as_the_lightning_launched_two_process_run",
        ),
    ),
    "srun .venv/bin/contrastlab-train trainer=ddp trainer.devices=8 trainer.num_nodes=2 hydra.run.dir=outputs/simclr/runs/slurm-$SLURM_JOB_ID": (
        "sbatch --wait on the fake SLURM, 2 tasks, trainer=ddp_cpu devices=2 nodes=1, debug=fast",
        (
            "tests/docs/test_readme_slurm.py::test_readme_sbatch_srun",
            "tests/docs/test_readme_slurm.py::test_fake_srun_gives_lightning_its_ranks_and_sacct_reports_failures",
        ),
    ),
    "contrastlab-train trainer=ddp_cpu": (
        "+ debug=fast, all three objectives",
        (
            "tests/distributed/test_ddp_runs.py::test_ddp_runs_write_one_run_directory_each_and_nothing_else",
            "tests/distributed/test_ddp_runs.py::test_lr_scaling_counts_every_process",
        ),
    ),
    # --- resume ------------------------------------------------------------------------------------------
    "contrastlab-train <same overrides> ckpt_path=outputs/simclr/runs/<run>/checkpoints/last.ckpt": (
        "after a SIGKILL",
        ("tests/tracking/test_wandb_resume.py::test_killed_run_resumes_the_same_wandb_run",),
    ),
    "contrastlab-train <same overrides> ckpt_path=last": (
        "after a SIGKILL",
        ("tests/training/test_reliability_resume.py::test_sigkill_sigterm_and_resumes_end_like_an_uninterrupted_run",),
    ),
    "contrastlab-train <same overrides> resume=auto": (
        "after a SIGTERM",
        ("tests/training/test_reliability_resume.py::test_sigkill_sigterm_and_resumes_end_like_an_uninterrupted_run",),
    ),
    # --- W&B: the network part is not run here -----------------------------------------------------------
    "wandb login": (
        "NOT RUN: needs a W&B account and network; the offline fallback is tested",
        ("tests/objectives/test_train_simclr.py::test_default_run_wandb_offline",),
    ),
    "wandb sync outputs/.../wandb/offline-run-*": (
        "NOT RUN: uploads need network; the offline run folders it syncs are checked",
        (
            "tests/tracking/test_wandb_resume.py::test_killed_run_resumes_the_same_wandb_run",
            "tests/distributed/test_ddp_runs.py::test_one_wandb_run_with_each_step_logged_once",
        ),
    ),
    "wandb sync": ("NOT RUN: see above", ("tests/objectives/test_train_simclr.py::test_default_run_wandb_offline",)),
    # --- Python API and the worked example ---------------------------------------------------------------
    "from contrastlab import api": (
        "the three lines, in-process",
        (
            "tests/cli/test_api.py::test_train_writes_a_run_directory_like_the_cli",
            "tests/cli/test_api.py::test_load_checkpoint_and_embed_reproduce_the_logged_knn",
        ),
    ),
    "# my_losses/decoupled.py  (any importable module, e.g. next to your scripts or in src/contrastlab/losses/)": (
        "the README text itself, against a loop over pairs (float32, float64, gradients)",
        ("tests/docs/test_readme_recipes.py::test_worked_example_loss_equals_a_loop_over_pairs",),
    ),
    "PYTHONPATH=. contrastlab-train loss=decoupled hydra.searchpath=[file://$PWD/my_conf]": (
        "+ debug=fast, from the README's own files",
        ("tests/docs/test_readme_recipes.py::test_worked_example_trains_from_its_own_folder",),
    ),
    # --- development -------------------------------------------------------------------------------------
    "make lint": ("make test runs it first", ("tests/docs/test_readme.py::test_make_test_runs_the_lint_target",)),
    "python benchmarks/loss_speed.py": (
        "toy sizes",
        ("tests/docs/test_benchmarks.py::test_loss_speed_prints_both_tables",),
    ),
    "python benchmarks/train_overhead.py": (
        "toy sizes",
        ("tests/docs/test_benchmarks.py::test_train_overhead_compares_the_same_losses",),
    ),
    "python benchmarks/mining.py": (
        "toy sizes; its agreement check must hold",
        ("tests/docs/test_benchmarks.py::test_mining_miners_agree_with_the_references",),
    ),
    "python tests/docs/test_readme_commands.py": (
        "as written",
        ("tests/docs/test_readme_commands.py::test_the_map_prints_as_a_markdown_table",),
    ),
    "python benchmarks/<name>.py": (
        "all three",
        (
            "tests/docs/test_benchmarks.py::test_loss_speed_prints_both_tables",
            "tests/docs/test_benchmarks.py::test_mining_miners_agree_with_the_references",
            "tests/docs/test_benchmarks.py::test_train_overhead_compares_the_same_losses",
        ),
    ),
}


def readme_commands(text: str | None = None) -> set[str]:
    """The README's commands: bash lines (continuations joined, comments dropped), inline code that starts
    with a command, and the first line of each python block."""
    text = (ROOT / "README.md").read_text() if text is None else text
    commands: set[str] = set()
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line.strip())  # a trailing comment
            if line and not line.startswith("#"):
                commands.add(re.sub(r"\s+", " ", line))
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        commands.add(block.strip().splitlines()[0].strip())
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    commands |= {span for span in re.findall(r"`([^`\n]+)`", prose) if COMMAND.match(span)}
    return commands


def _exists(ref: str) -> bool:
    if ref.endswith(".ipynb"):
        return ROOT / ref in NOTEBOOKS  # the notebooks test_notebooks.py executes
    path, _, name = ref.partition("::")
    file = ROOT / path
    if not file.is_file():
        return False
    tree = ast.parse(file.read_text())
    return any(isinstance(node, ast.FunctionDef) and node.name == name for node in ast.walk(tree))


def test_every_readme_command_has_a_test() -> None:
    missing = sorted(readme_commands() - set(COVERAGE))
    assert not missing, "README commands that no entry of COVERAGE maps to a test:\n" + "\n".join(missing)


def test_no_entry_for_a_command_the_readme_lost() -> None:
    stale = sorted(set(COVERAGE) - readme_commands())
    assert not stale, "COVERAGE entries for commands no longer in the README:\n" + "\n".join(stale)


def test_every_named_test_exists() -> None:
    for command, (how, refs) in COVERAGE.items():
        assert how and refs, command
        for ref in refs:
            assert _exists(ref), f"{command!r} names {ref}, which does not exist"


def test_the_extraction_sees_continuations_comments_and_inline_commands() -> None:
    text = "\n".join(
        [
            "Run `make train` or `contrastlab-eval ckpt_path=x`; `data=cifar10` is an override, not a command.",
            "```bash",
            "contrastlab-train a=1 \\",
            "    b=2   # two lines",
            "# a comment line",
            "```",
            "```python",
            "from x import y",
            "y()",
            "```",
        ]
    )
    assert readme_commands(text) == {"make train", "contrastlab-eval ckpt_path=x", "contrastlab-train a=1 b=2",
                                     "from x import y"}  # fmt: skip


def test_the_map_prints_as_a_markdown_table() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "tests/docs/test_readme_commands.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    rows = [line for line in out.splitlines() if line.startswith("| `")]
    assert len(rows) == len(COVERAGE) and all(line.count(" | ") == 2 for line in rows)


if __name__ == "__main__":  # the map as a Markdown table: python tests/docs/test_readme_commands.py
    print("| README command | run here as | tests |\n|---|---|---|")
    for command, (how, refs) in COVERAGE.items():
        print(f"| `{command}` | {how} | {', '.join(refs)} |")
