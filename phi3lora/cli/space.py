"""`python -m phi3lora space build|push`: the app as a Hugging Face Space."""
from __future__ import annotations

from ..deploy.space import SpaceError, build_space
from ..deploy.space_hub import DEFAULT_MOUNT, PushOptions, push_space, size_text


def add_space_command(subparsers) -> None:
    """Register `space build` and `space push` on the CLI's subparsers."""
    parser = subparsers.add_parser("space", help="build or push the app as a Hugging Face Space")
    actions = parser.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="write a ready-to-push Space folder")
    build.add_argument("out", help="a new or empty folder")
    build.add_argument("--force", action="store_true", help="empty OUT first if it is not empty")
    build.set_defaults(run=_build_command)

    push = actions.add_parser("push", help="build, then create or update the Space on the Hub")
    push.add_argument("--repo", required=True, metavar="OWNER/NAME", help="the Space's id")
    push.add_argument("--private", action="store_true", help="create the Space private (an existing one keeps its visibility)")
    push.add_argument("--hardware", metavar="FLAVOR", help="request this hardware, e.g. l4x1, a10g-large, a100-large (billed)")
    push.add_argument("--storage-bucket", metavar="OWNER/BUCKET",
                      help="mount this storage bucket (created private if missing) and keep runs on it (PHI3LORA_HOME)")
    push.add_argument("--mount-path", default=DEFAULT_MOUNT, help=f"where the bucket mounts (default {DEFAULT_MOUNT})")
    push.add_argument("--variable", action="append", default=[], metavar="KEY=VALUE",
                      help="a public Space variable, e.g. --variable PHI3LORA_MAX_UPLOAD_MB=200")
    push.add_argument("--secret", action="append", default=[], metavar="KEY",
                      help="a Space secret named KEY, its value read from $KEY here (never from the command line)")
    push.add_argument("--token-env", metavar="VAR", help="read the push token from $VAR (default: $HF_TOKEN or the saved login)")
    push.set_defaults(run=_push_command)


def _build_command(args) -> int:
    build = build_space(args.out, force=args.force)
    tops = sorted({name.split("/")[0] for name in build.files})
    print(f"wrote {len(build.files)} files ({size_text(build.total_bytes)}) to {build.folder}: {', '.join(tops)}")
    print(f"sdk_version {build.sdk_version}; push it with: python -m phi3lora space push --repo OWNER/NAME")
    return 0


def _push_command(args) -> int:
    options = PushOptions(repo=args.repo, private=args.private, hardware=args.hardware,
                          storage_bucket=args.storage_bucket, mount_path=args.mount_path,
                          variables=_parse_variables(args.variable), secrets=args.secret, token_env=args.token_env)
    push_space(options)
    return 0


def _parse_variables(items: list[str]) -> dict[str, str]:
    variables = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SpaceError(f"--variable {item!r}: expected KEY=VALUE")
        variables[key.strip()] = value
    return variables

