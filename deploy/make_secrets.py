"""Make docker-compose.yml's secrets once, into the directory its services read them from.

    python deploy/make_secrets.py [--owner USER] DIR

Run by the compose file's one-shot ``secrets`` service before anything else
starts, so that a bare ``docker compose up --build`` needs no environment. For
each secret: the operator's value when the environment sets one (it replaces
what DIR held), else the value DIR already holds, else a new random one. The
values are never printed; what the script says is where each came from.

What it writes (each file 0400, owned by USER when given, which needs root):

    django_secret_key   the workers' DJANGO_SECRET_KEY (via DJANGO_SECRET_KEY_FILE)
    turn_secret         the workers' PEERJS_TURN_SECRET (via PEERJS_TURN_SECRET_FILE)
    turnserver.conf     coturn's static-auth-secret, the same value (coturn -c)
    postgres_password   the database's password (postgres' POSTGRES_PASSWORD_FILE)
    pgpass              the same password, for the workers' libpq (PGPASSFILE)
"""
import argparse
import os
import pwd
import re
import secrets
import sys
from pathlib import Path

# (environment variable, file, bytes of randomness when generated)
SECRETS = [
    ("DJANGO_SECRET_KEY", "django_secret_key", 50),
    ("TURN_SECRET", "turn_secret", 32),
    ("POSTGRES_PASSWORD", "postgres_password", 24),
]
# Printable ASCII without spaces: a value is written into config lines
# (turnserver.conf, pgpass), where a newline would add a line of its own.
ALLOWED = re.compile(r"[!-~]+")


def write(path, text, owner):
    """Replace ``path`` with ``text`` at once: a reader sees the old file or the new, whole."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    try:
        if owner:
            os.fchown(fd, owner.pw_uid, owner.pw_gid)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def pgpass_field(value):
    return value.replace("\\", "\\\\").replace(":", "\\:")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--owner", help="the user who reads the files (needs root)")
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    owner = pwd.getpwnam(args.owner) if args.owner else None
    args.directory.mkdir(parents=True, exist_ok=True)

    values, said = {}, []
    for variable, name, size in SECRETS:
        path = args.directory / name
        given = os.environ.get(variable, "")
        if given:
            if not ALLOWED.fullmatch(given):
                sys.exit(f"error: {variable} must be printable ASCII without spaces (it goes into config lines).")
            values[variable], origin = given, "from the environment"
        elif path.is_file() and path.stat().st_size:
            values[variable], origin = path.read_text().strip(), "kept"
        else:
            values[variable], origin = secrets.token_urlsafe(size), "generated"
        said.append(f"{variable} {origin}")
        write(path, values[variable], owner)

    write(args.directory / "turnserver.conf", f"static-auth-secret={values['TURN_SECRET']}\n", owner)
    # Any host, port, database and user: the one password of the compose database.
    write(args.directory / "pgpass", f"*:*:*:*:{pgpass_field(values['POSTGRES_PASSWORD'])}\n", owner)
    print(f"secrets in {args.directory}: {', '.join(said)}")


if __name__ == "__main__":
    main()
