"""``avatar-engine profiles list|show|delete``: the enrollment profiles on this machine."""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add"]


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profiles", help="list, show or delete enrollment profiles",
                       description="Profiles made by 'avatar-engine enroll' (personalized weights, neutral "
                                   "landmarks, source photo, contact sheet), one folder per name under "
                                   "$XDG_DATA_HOME/avatar-engine/profiles unless --profiles-dir says otherwise.")
    p.add_argument("action", choices=("list", "show", "delete"), help="what to do")
    p.add_argument("name", nargs="?", default=None, help="profile name (show, delete)")
    p.add_argument("--profiles-dir", type=Path, default=None, help="where profiles live")
    p.set_defaults(run=run)


def _row(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def run(args: argparse.Namespace) -> int:
    from avatar_engine.errors import AvatarError, ProfileError
    from calibration.profiles import ProfileStore

    store = ProfileStore(args.profiles_dir)
    if args.action == "list":
        names = store.names()
        if not names:
            print(f"no profiles in {store.root}")
        for name in names:
            try:
                prof = store.load(name, check_weights=False)
                after = prof.meta.get("metrics", {}).get("after", {})
                print(f"{name}\tcreated {prof.meta.get('created', '?')}\tPSNR {_row(after.get('psnr', '?'))} dB")
            except ProfileError as exc:
                print(f"{name}\tBROKEN: {exc}")
        return 0
    if args.name is None:
        raise AvatarError(f"profiles {args.action} needs a profile name")
    if args.action == "delete":
        print(f"deleted {store.delete(args.name)}")
        return 0
    prof = store.load(args.name)
    print(f"profile {prof.name}: {prof.path}")
    for key, value in prof.meta.items():
        if isinstance(value, dict):
            for sub, inner in value.items():
                shown = ", ".join(f"{k} {_row(v)}" for k, v in inner.items()) if isinstance(inner, dict) else _row(inner)
                print(f"  {key}.{sub}: {shown}")
        else:
            print(f"  {key}: {value}")
    print(f"  files: {', '.join(sorted(p.name for p in prof.path.iterdir()))}")
    return 0
