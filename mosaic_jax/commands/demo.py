"""``mosaic-jax demo``: the whole system on the embedded dataset (``make demo``)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="data -> training -> ensemble forecast -> evaluation, on the CPU")
    p.add_argument("--out", default="demo_output", help="folder for everything the demo writes")
    p.add_argument("--train-steps", type=int, help="override the number of training steps")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from mosaic_jax.demo import DemoSettings, run_demo, skill_vs_persistence

    settings = DemoSettings()
    if args.train_steps:
        settings = dataclasses.replace(settings, train_steps=args.train_steps)
    result = run_demo(args.out, settings, progress=not args.no_progress)
    ev = result["evaluation"]
    print("\n== results ==")
    for name, seconds in result["durations"].items():
        print(f"  {name:55s} {seconds:7.1f} s")
    first_lead = float(settings.model.step_hours)
    for lead in dict.fromkeys((first_lead, 24.0)):  # the first lead time, then a day
        print(f"\nRMSE at +{lead:g} h, trained Mosaic vs persistence (lower is better):")
        for var, model, pers in skill_vs_persistence(ev["scorecard_csv"], lead):
            verdict = "beats persistence" if model < pers else "does NOT beat persistence"
            print(f"  {var:8s} model {model:10.4g}  persistence {pers:10.4g}  {verdict}")
    print(f"\nscorecard: {ev['scorecard_md']}")
    print(f"plots:     {', '.join(str(p.name) for p in ev['plots'])}")
    print(f"everything the demo wrote is in {result['out_dir']}")
    return 0
