"""`shipyard keygen / encrypt / decrypt`: authenticated encryption of model files."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("keygen", help="write a new random 256-bit model key (mode 0600)")
    p.add_argument("-o", "--output", type=Path, metavar="KEY", help="the key file to write (never overwritten)")
    p.add_argument("key", type=Path, nargs="?", help=argparse.SUPPRESS)  # the old spelling: keygen KEY
    p.set_defaults(func=cmd_keygen)
    p = sub.add_parser("encrypt", help="encrypt a model (AES-256-GCM); every shipyard loader reads it with the key")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_encrypt)
    p = sub.add_parser("decrypt", help="write the plaintext of an encrypted model")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_decrypt)


def cmd_keygen(args) -> int:
    from shipyard.cliargs import deprecated
    from shipyard.errors import UsageError
    from shipyard.protect import generate_key

    if args.key is not None:
        if args.output is not None:
            raise UsageError("give the key file once: shipyard keygen -o KEY")
        deprecated("keygen KEY", "keygen -o KEY")
    out = args.output or args.key
    if out is None:
        raise UsageError("say where to write the key: shipyard keygen -o KEY")
    print(f"wrote a new key to {generate_key(out)} (readable by you only; keep it out of version control)")
    return 0


def cmd_encrypt(args) -> int:
    from shipyard.atomic import atomic_path, check_output_path
    from shipyard.errors import UnsupportedError
    from shipyard.formats import model_files
    from shipyard.protect import encrypt_model, read_key
    from shipyard.sniff import open_model

    model = open_model(args.model)
    if model.encrypted:
        raise UnsupportedError(f"{model.path} is already encrypted")
    if model.format == "tf-checkpoint":
        raise UnsupportedError("a checkpoint is several files; freeze it (shipyard freeze) and encrypt the frozen graph")
    out = check_output_path(args.output, model.path)
    data = encrypt_model(model.path, model.format, read_key(args.key_file_path, "encrypting needs a key"),
                         model_files(model.path, model.format))
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    doc = {"model": str(model.path), "format": model.format, "output": str(out), "bytes": len(data), "algorithm": "AES-256-GCM"}
    print(json.dumps(doc, indent=2) if args.json else f"encrypted {model.path} ({model.format}) -> {out} with AES-256-GCM")
    return 0


def cmd_decrypt(args) -> int:
    import io
    import tarfile

    from shipyard.atomic import atomic_path, check_output_path
    from shipyard.errors import ModelFormatError, UsageError
    from shipyard.protect import KIND_DIR, decrypt_bytes, read_key

    path = Path(args.model)
    out = check_output_path(args.output, path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read ({exc.strerror})") from exc
    header, plain = decrypt_bytes(data, read_key(args.key_file_path))
    siblings = _sibling_files(header, plain, path, out)
    if siblings:  # a model of several files side by side (an OpenVINO IR's .xml and .bin): each its own file
        from contextlib import ExitStack

        with ExitStack() as stack:  # entered first, replaced last: the file a reader opens (``out``)
            for target, content in siblings:
                tmp = stack.enter_context(atomic_path(target))
                os.chmod(tmp, 0o600)
                tmp.write_bytes(content)
    elif header.kind == KIND_DIR:
        try:
            tar = tarfile.open(fileobj=io.BytesIO(plain))  # noqa: SIM115 - closed by the with below
            members = tar.getmembers()
        except (tarfile.TarError, EOFError) as exc:
            raise ModelFormatError(f"{path}: the decrypted model folder is not a readable tar archive ({exc})") from exc
        with atomic_path(out, directory=True) as tmp, tar:
            os.chmod(tmp, 0o700)  # plaintext: for its owner only, like a decrypted file
            for member in members:
                if not member.isfile() or member.name.startswith(("/", "..")) or "/../" in member.name:
                    raise UsageError(f"{path}: the archive holds an unsafe entry '{member.name}'")
            tar.extractall(tmp, filter="data")
    else:
        with atomic_path(out) as tmp:
            os.chmod(tmp, 0o600)
            tmp.write_bytes(plain)
    doc = {"model": str(path), "format": header.format, "output": str(out)}
    print(json.dumps(doc, indent=2) if args.json else f"decrypted {path} ({header.format}) -> {out}")
    return 0


def _sibling_files(header, plain: bytes, path: Path, out: Path) -> list[tuple[Path, bytes]]:
    """For a file format whose models are several files side by side (the registry's ``files``,
    not a folder): [(where each decrypted file goes, its bytes)], the main file at ``out`` first and
    each other one beside it with its own suffix; each checked like any output. Empty otherwise."""
    from shipyard.atomic import check_output_path
    from shipyard.errors import ModelFormatError
    from shipyard.formats import registry
    from shipyard.protect import KIND_DIR, untar

    fmt = registry.FORMATS.get(header.format)
    if header.kind != KIND_DIR or fmt is None or fmt.directory or not fmt.files:
        return []
    files = untar(plain, path)
    main = [name for name in files if Path(name).suffix == fmt.suffix]
    targets = {name: out if name in main else out.with_suffix(Path(name).suffix) for name in files}
    if len(main) != 1 or len(set(targets.values())) != len(targets):
        raise ModelFormatError(f"{path}: the encrypted {fmt.word} holds files that do not make one model "
                               f"({', '.join(sorted(files))})")
    for target in targets.values():
        check_output_path(target, path)
    return sorted(((targets[name], files[name]) for name in files), key=lambda t: t[0] != out)
