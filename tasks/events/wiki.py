"""The Wiki dataset from the raw Wikipedia edit events (JODIE data as packaged by ifl-tpp).

Conversion (what ``dataset=Wiki`` does on load, and what this script writes to a file):
1. verify the raw file's sha256 (59bbb9aa...f35f4b9d, pinned in the registry);
2. read ``arrival_times`` and ``marks`` (object arrays of per-sequence lists: this needs
   unpickling, so it is done only with an explicit ``--trust-pickle`` / ``trust_pickle``);
3. one sequence per row, in file order (1000 sequences, 157,471 events, 84..1936 events each);
   times are seconds, strictly increasing within a sequence (checked; no ties in this file);
4. marks are kept as they are, 0-based: 0..8226, i.e. 8227 mark values (Meta TPP's config
   says 8226 for its converted wiki.npz, which could not be inspected here);
5. observation window [0, T] for every sequence with T = the last event time of the whole
   file (2,678,373 s, the end of data collection), so the survival term covers the time from
   a user's last edit to the end of the data;
6. split 60/20/20 by sequence in file order (600 / 200 / 200), as Meta TPP splits.

    python -m tasks.events.wiki RAW.npz OUT.npz --trust-pickle

writes OUT.npz in Meta TPP's layout (padded inter-event times with the window-end gap last,
1-indexed marks, masks), which loads without pickle (``formats.load_meta_tpp_npz``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from aaren_bench.data import get
from aaren_bench.data.registry import ChecksumError, sha256sum
from tasks.events.data import EventSeqs
from tasks.events.formats import load_ifl_npz, save_meta_tpp_npz

NUM_MARKS = 8227


def convert_wiki(raw_path, trust_pickle: bool = False, verify: bool = True) -> EventSeqs:
    """Raw Wikipedia file -> EventSeqs (steps 1-5 above)."""
    if verify:
        want = get("Wiki").files[0].sha256
        got = sha256sum(Path(raw_path))
        if got != want:
            raise ChecksumError(f"{raw_path}: sha256 {got} is not the pinned {want}; pass verify=False for another copy")
    return load_ifl_npz(raw_path, trust_pickle=trust_pickle, num_marks=NUM_MARKS, t_end="global_max")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw", help="the raw wikipedia npz (arrival_times, marks)")
    ap.add_argument("out", help="where to write the converted Meta TPP-layout npz")
    ap.add_argument("--trust-pickle", action="store_true", help="allow unpickling the raw file's object arrays")
    ap.add_argument("--no-verify", action="store_true", help="skip the sha256 check (for another copy of the data)")
    a = ap.parse_args(argv)
    seqs = convert_wiki(a.raw, trust_pickle=a.trust_pickle, verify=not a.no_verify)
    path = save_meta_tpp_npz(seqs, a.out)
    print(f"wrote {path}: {len(seqs)} sequences, {seqs.n_events} events, {seqs.num_marks} marks")


if __name__ == "__main__":
    main()
