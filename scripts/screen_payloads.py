"""Screen payload files as the ServerApp does before distilling (``server/screening.py``) and print, per file,
samples received and kept, teacher agreement, feature outliers, near-duplicates and the rejection reason.

    python scripts/screen_payloads.py --teacher assets/teachers/fashion_mnist site0.safetensors site1.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.screening import screen_payloads
from shared.checkpoint import load_checkpoint
from shared.config.screen import ScreenConfig
from shared.errors import CondexError
from shared.payload import CondensedPayload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("payloads", nargs="+", type=Path, help="payload files (.safetensors)")
    parser.add_argument("--teacher", default="assets/teachers/fashion_mnist", help="teacher checkpoint directory")
    args = parser.parse_args(argv)
    try:
        teacher, card = load_checkpoint(args.teacher)
        payloads = {str(p): CondensedPayload.load(p) for p in args.payloads}
        _, report = screen_payloads(payloads, teacher, card, ScreenConfig().validate())
    except CondexError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("| payload | method | samples | kept | agreement | outliers | duplicates | rejected |")
    print("|---|---|---|---|---|---|---|---|")
    for name, site in report["sites"].items():
        print(f"| {Path(name).name} | {payloads[name].meta.method} | {site['samples']} | {site['kept']} "
              f"| {site['agreement']:.3f} | {len(site['outliers'])} | {len(site['duplicates'])} "
              f"| {site['rejected'] or '-'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
