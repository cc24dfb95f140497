"""``attngen emit SPEC``: print a generated kernel at any stage (Triton source, TTIR, TTGIR, LLIR,
PTX, SASS), compiled stages exactly as a launch at the given shape compiles them."""
from __future__ import annotations

from .common import DTYPES, add_command, dtype_of, load

EXAMPLES = """
  attngen emit specs/mha.yaml                                  # the Triton source of the forward
  attngen emit specs/gqa.yaml --kernel decode --stage ptx --target sm_90
  attngen emit specs/longformer.yaml --kernel bwd --stage ttgir --target sm_80 > bwd.ttgir
  attngen emit specs/mha.yaml --stage sass --n 4096 --dtype float16   # the machine code a launch runs
  attngen emit specs/gqa.yaml --kernel decode --stage sass --n 8192 --batch 16 --page-size 16
"""


def add_parser(subparsers):
    parser = add_command(subparsers, "emit", help="print a generated kernel at any stage",
                         description="Print the kernel generated for a spec: the Triton source, or "
                                     "what Triton lowers it to for a GPU architecture (compiled ahead "
                                     "of time: no GPU needed).",
                         examples=EXAMPLES)
    parser.add_argument("spec", metavar="SPEC", help="spec YAML file")
    parser.add_argument("--kernel", choices=("fwd", "bwd", "decode", "select", "lsh", "varlen_fwd", "varlen_bwd"),
                        default="fwd",
                        help="which kernel (default fwd; select: the selection kernels of select:; lsh: the bucket "
                             "kernel of lsh:; varlen_*: "
                             "attn.varlen's, compiled as a packed batch of one sequence of --n queries and --nk keys)")
    parser.add_argument("--stage", choices=("triton", "ttir", "ttgir", "llir", "ptx", "sass"), default="triton",
                        help="how far to lower it (default triton: the generated source)")
    parser.add_argument("--target", choices=("sm_80", "sm_90"), default="sm_90",
                        help="GPU architecture of the compiled stages (default sm_90)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16",
                        help="input dtype the compiled stages are built for (default float16)")
    parser.add_argument("--n", type=int, default=4096,
                        help="sequence length the launch is compiled for (decode: the cache length; default 4096)")
    parser.add_argument("--nk", type=int, default=None, help="key length (default --n; not for decode)")
    parser.add_argument("--batch", type=int, default=1, help="decode: sequences in the batch (default 1)")
    parser.add_argument("--page-size", type=int, default=None,
                        help="decode: a paged cache with pages of this many tokens (default: contiguous)")
    return parser


def compiler_entry(name: str):
    """`attngen.<name>` (compile, emit), looked up at call time: importing the compiler is deferred
    until a command needs it, and tests can stand in for it."""
    import attngen

    return getattr(attngen, name)


def run(args) -> int:
    spec = load(args.spec)
    text = compiler_entry("emit")(spec, kernel=args.kernel, stage=args.stage, target=args.target,
                                  dtype=dtype_of(args.dtype), n=args.n, nk=args.nk, batch=args.batch,
                                  page_size=args.page_size)
    print(text, end="" if text.endswith("\n") else "\n")
    return 0
