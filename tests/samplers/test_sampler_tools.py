"""make bench-samplers / make table-samplers (tools/samplers): the reference-cost baselines compute what ours
compute (so the benchmark compares equal work), the benchmark's rows, the table end to end on smoke runs."""

import json

import numpy as np
import pytest
import torch

from mixlab.samplers.buffer import rank_weights
from mixlab.samplers.energies import Manywell
from mixlab.samplers.local_search import PaperStepSize, mala
from mixlab.samplers.objectives import SubTrajectoryBalance
from tools.samplers import bench
from tools.samplers.paper import PAPER, PAPER_RUNS, TABLE_ROWS, load_paper
from tools.samplers.table import welch_p


def test_reference_cost_baselines_compute_what_ours_compute():
    x = Manywell(12).sample(40, torch.Generator().manual_seed(0)).double()
    loop, ours = bench.PairLoopManywell(12), Manywell(12)
    torch.testing.assert_close(loop.log_reward(x), ours.log_reward(x))
    torch.testing.assert_close(loop.grad_log_reward(x), ours.grad_log_reward(x))
    g = torch.Generator().manual_seed(1)
    t = {
        k: torch.randn(*s, generator=g, dtype=torch.float64)
        for k, s in [("log_pf", (5, 7)), ("log_pb", (5, 7)), ("log_r", (5,)), ("log_f", (5, 8))]
    }
    torch.testing.assert_close(bench.subtb_per_sample(**t), SubTrajectoryBalance(2.0)(**t))
    fast = mala(ours, x, steps=12, burn_in=6, step_size=0.05, rule=PaperStepSize(), generator=torch.Generator().manual_seed(3))
    slow, eta = bench.mala_uncached(loop, x, 12, 6, 0.05, PaperStepSize(), torch.Generator().manual_seed(3))
    torch.testing.assert_close(slow, fast.samples)
    assert eta == pytest.approx(fast.step_size)
    slow_buf = bench.ReRankingBuffer()
    log_r = torch.randn(50, generator=g, dtype=torch.float64)
    slow_buf.add(x[:50], log_r)
    torch.testing.assert_close(slow_buf.weights, rank_weights(log_r))  # the same priorities


def test_bench_rows_cover_the_request_and_each_ratio_is_its_references_time_over_its_own(tmp_path):
    rows = bench.main(
        [
            "--dims",
            "2,4",
            "--rows",
            "TB,LS,buffer",
            "--batch",
            "8",
            "--T",
            "4",
            "--buffer-fill",
            "40",
            "--ls-steps",
            "4",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--json",
            str(tmp_path / "b.json"),
        ]
    )
    assert [(r["dim"], r["row"], r["impl"]) for r in rows] == [
        (d, k, i) for d in (2, 4) for k in ("TB", "LS", "buffer") for i in ("reference-cost", "ours")
    ]
    for ref, ours in zip(rows[::2], rows[1::2]):  # each pair: the reference first, timed in the same process
        assert ref["speedup_vs_reference_cost"] == 1.0
        assert ours["speedup_vs_reference_cost"] == pytest.approx(ref["sec_per_step"] / ours["sec_per_step"])
    assert all(r["images_per_sec"] == pytest.approx(8 / r["sec_per_step"]) for r in rows)
    assert json.loads((tmp_path / "b.json").read_text()) == rows


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_bench_on_a_missing_gpu_is_one_clear_error(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--device", "cuda"])
    assert "--device cuda: no GPU visible" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dims", "7"], "--dims: Manywell needs even dimensions"),
        (["--dims", "8,x"], "--dims: comma-separated integers"),
        (["--rows", "TB,XX"], "--rows: choose from TB,TB+Expl,TB+LP,FL-SubTB+LP,LS,buffer"),
    ],
)
def test_bench_bad_arguments_are_one_clear_error_before_timing(args, message, capsys):
    with pytest.raises(SystemExit):
        bench.main(args)
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_table_rows_are_the_papers(tmp_path):
    assert all(e in PAPER for e in TABLE_ROWS) and len(TABLE_ROWS) == 7 and PAPER_RUNS == 5
    assert PAPER["sampler_gmm25_tb_expl_ls"] == ("25GMM", "TB + Expl. + LS", (0.171, 0.013), (0.004, 0.011), (1.25, 0.18))
    (tmp_path / "paper.yaml").write_text(
        "runs: 5\ntable_rows: [a, b]\nexperiments:\n  a: {energy: E, method: M, w2: [1.0, 0.1]}\n"
    )
    with pytest.raises(ValueError, match=r"table_rows \['b'\] have no entry"):
        load_paper(tmp_path / "paper.yaml")
    assert welch_p([1.0], (1.0, 0.1)) is None  # one seed: no std
    assert welch_p([0.17, 0.18, 0.16], (0.171, 0.013)) > 0.5 and welch_p([5.0, 5.1, 4.9], (0.171, 0.013)) < 1e-3


def test_validation_curves_join_the_versions_of_a_resumed_run(tmp_path):
    from tools.samplers.curves import validation_curves

    header = "epoch,step,train/loss_step,val/w2,val/delta_log_z\n"
    for version, rows in enumerate(
        [
            ["0,49,0.5,,", "0,99,,7.0,-2.0", "1,199,,6.0,-1.5"],  # killed after iteration 200
            ["1,199,,5.5,-1.25", "2,299,,5.0,1.0"],
        ]
    ):  # resumed: re-validated 200, then 300
        (tmp_path / "csv" / f"version_{version}").mkdir(parents=True)
        (tmp_path / "csv" / f"version_{version}" / "metrics.csv").write_text(header + "\n".join(rows) + "\n")
    curves = validation_curves(tmp_path)
    assert set(curves) == {"val/w2", "val/delta_log_z"}
    np.testing.assert_array_equal(curves["val/w2"], [[100, 7.0], [200, 5.5], [300, 5.0]])
    np.testing.assert_array_equal(curves["val/delta_log_z"][:, 1], [-2.0, -1.25, 1.0])


def test_curves_cli_compares_labelled_runs(tmp_path, capsys):
    from tools.samplers.curves import main

    header = "epoch,step,val/w2,val/shallow_share\n"
    for name, rows in (("a", ["0,99,6.0,0.3", "1,199,5.5,0.2"]), ("b", ["0,99,6.2,0.1"])):
        (tmp_path / name / "csv" / "version_0").mkdir(parents=True)
        (tmp_path / name / "csv" / "version_0" / "metrics.csv").write_text(header + "\n".join(rows) + "\n")
    out = tmp_path / "cmp.png"
    assert (
        main(
            [
                "--runs",
                f"paper={tmp_path / 'a'}",
                f"reference={tmp_path / 'b'},{tmp_path / 'a'}",
                "--metrics",
                "val/w2,val/shallow_share",
                "--hline",
                "val/w2=5.33",
                "val/shallow_share=0.156",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert out.stat().st_size > 10_000
    assert main(["--runs", f"x={tmp_path / 'a'}", "--metrics", "val/eubo", "--out", str(out)]) == 2
    assert "none of val/eubo" in capsys.readouterr().err
    for bad in (
        ["--runs", "nolabel", "--out", str(out)],
        ["--runs", f"x={tmp_path}", "--hline", "val/w2", "--out", str(out)],
        ["--runs", f"x={tmp_path}"],
        [str(tmp_path), "--runs", f"x={tmp_path}"],
    ):
        with pytest.raises(SystemExit):
            main(bad)


@pytest.mark.slow
def test_table_end_to_end_on_smoke_runs(tmp_path):
    from tools.samplers.table import main

    args = [
        "--experiments",
        "sampler_gmm25_tb",
        "--seeds",
        "2",
        "--iters",
        "8",
        "--eval-every",
        "4",
        "--eval-n",
        "32",
        "--reference-seeds",
        "1",
        "--out",
        str(tmp_path),
        "--",
        "debug=smoke",
    ]
    assert main(["--seed", "1", *args]) == 0  # one seed alone (as parallel commands would): a run, no table
    assert (
        not (tmp_path / "table.json").exists() and (tmp_path / "runs" / "sampler_gmm25_tb_seed1" / "table_timing.json").is_file()
    )
    assert main(["--seed", "1", "--experiments", "sampler_gmm25_tb"]) == 2  # --seed needs --out
    assert main(args) == 0  # trains seed 0, reuses seed 1
    table = json.loads((tmp_path / "table.json").read_text())
    row = table["rows"][0]
    assert row["experiment"] == "sampler_gmm25_tb" and row["iterations"] == 8 and row["seeds"] == 2
    assert len(row["w2"]["values"]) == 2 and row["w2"]["std"] is not None and row["w2"]["paper"] == [4.83, 0.45]
    assert [r["name"] for r in table["reference_w2"]["25GMM"]] == ["exact vs exact", "without one corner mode vs exact"]
    md = (tmp_path / "table.md").read_text()
    assert "| 25GMM | TB | 8 | 2 |" in md and "1.176 ± 0.109" in md and "W2 reference rows" in md
    # the arguments after -- are recorded per row; the table's own (seed, iterations, logger) are not
    assert row["overrides"] == ["debug=smoke"] and "- 25GMM TB: `debug=smoke`" in md
    assert (tmp_path / "curves.png").stat().st_size > 0
    from tools.samplers.curves import validation_curves

    w2 = validation_curves(tmp_path / "runs" / "sampler_gmm25_tb_seed0")["val/w2"]
    assert w2[:, 0].tolist() == [4, 8]  # x = iterations done at each validation (every 4 of 8)
    stamp = (tmp_path / "runs" / "sampler_gmm25_tb_seed0" / "table_timing.json").stat().st_mtime
    assert main(args) == 0  # finished runs are reused
    assert (tmp_path / "runs" / "sampler_gmm25_tb_seed0" / "table_timing.json").stat().st_mtime == stamp
    # --finished-only: tabulates what is there (2 of 3 seeds, a row without runs left out), trains nothing
    tab = ["--finished-only", "--seeds", "3", "--eval-n", "32", "--reference-seeds", "0"]
    assert main(tab + ["--experiments", "sampler_gmm25_tb,sampler_gmm25_tb_expl", "--out", str(tmp_path)]) == 0
    table = json.loads((tmp_path / "table.json").read_text())
    assert [(r["experiment"], r["seeds"]) for r in table["rows"]] == [("sampler_gmm25_tb", 2)]
    assert table["rows"][0]["w2"]["values"] == row["w2"]["values"] and table["rows"][0]["device"] == row["device"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["sampler_gmm25_tb_seed0", "sampler_gmm25_tb_seed1"]
    md = (tmp_path / "table.md").read_text()
    assert "| 25GMM | TB | 8 | 2 |" in md and "the finished runs among seeds 0-2" in md and table["finished_only"]
    assert "W2 reference rows" not in md  # --reference-seeds 0: no reference section
    assert json.loads((tmp_path / "runs" / "sampler_gmm25_tb_seed1" / "table_timing.json").read_text())["host"] == row["device"]
    assert main(tab + ["--out", str(tmp_path / "empty")]) == 2 and main(tab) == 2


def test_table_names_each_override_set_of_a_row_whose_seeds_differ():
    from argparse import Namespace

    from tools.samplers.table import METRICS, markdown

    metric = {"mean": 1.0, "std": None, "welch_p": None, "paper": None}
    row = {
        "energy": "Manywell-32",
        "method": "TB",
        "iterations": 8,
        "seeds": 2,
        "device": "cpu",
        "train_seconds_mean": 1.0,
        "eval_seconds_mean": 1.0,
        "overrides": ["", "model.buffer.rank_k=0.1"],
        **dict.fromkeys(METRICS, metric),
    }
    args = Namespace(finished_only=True, seeds=2, eval_n=32, iters=None, reference_seeds=0)
    md = markdown([row], {}, args)
    assert "- Manywell-32 TB: none\n- Manywell-32 TB: `model.buffer.rank_k=0.1`" in md
    assert "overrides" not in markdown([{**row, "overrides": [""]}], {}, args)  # none anywhere: no section


def test_reference_cli_prints_the_w2_reference_rows(capsys):
    from tools.samplers.reference import main

    rows = main(["--n", "20", "--seeds", "2"])
    assert [r.name for r in rows][0] == "25GMM exact vs exact" and all(len(r.values) == 2 for r in rows)
    assert capsys.readouterr().out.count("W2 = ") == len(rows)
    with pytest.raises(SystemExit):
        main(["--seeds", "0"])


@pytest.mark.parametrize("lp,fl,exploration", [(False, False, 0.0), (False, False, 0.3), (True, True, 0.0)])
def test_reference_cost_rollout_gives_the_same_trajectories_as_ours(lp, fl, exploration):
    """The baseline differs only in cost: equal states, log p_F, log p_B, log F for equal noise."""
    from closed_form import randomise_last_layer

    from mixlab.samplers.langevin import langevin_policy
    from mixlab.samplers.nets import PISPolicy, forward_looking_flow
    from mixlab.samplers.rollout import DiffusionRollout, RankNoise

    torch.manual_seed(0)
    policy = (langevin_policy(4, scale_init=0.5) if lp else randomise_last_layer(PISPolicy(4))).double()
    flow = forward_looking_flow(4, 1.0, 10, share_embeddings=True, policy=policy).double() if fl else None
    energy = Manywell(4)
    trajs = [
        rollout.forward(policy, energy, RankNoise(torch.Generator().manual_seed(0), 6), flow=flow, exploration=exploration)
        for rollout in (bench.ReferenceCostRollout(10, 1.0), DiffusionRollout(10, 1.0))
    ]
    for name in ("states", "log_pf", "log_pb", "log_r", "log_f"):
        a, b = getattr(trajs[0], name), getattr(trajs[1], name)
        if a is None or b is None:
            assert a is b is None and not fl
            continue
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)
