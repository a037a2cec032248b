"""The one table of build and image settings.

Everything that can vary between builds is a row in SETTINGS: its type, default and help. That one table drives
profile validation (`build/profiles/*.yaml`), `--set KEY=VALUE` overrides, the effective-config dump and what the
image's runtime config (/etc/appliance/config.json) contains. A key that is not in the table is an error that
names the key and the file (or `--set`) it came from.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from appliance import __version__
from appliance.export import FORMATS as OUTPUT_FORMATS
from appliance.ocr.tasks import Task
from appliance.runtime import Runtime
from appliance.smb import ACCOUNT as SMB_ACCOUNT
from appliance.smb import SMB1_WARNING

REPO = Path(__file__).resolve().parent.parent
PROFILES_DIR = REPO / "build" / "profiles"
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}
RUNTIME = Runtime()  # the run-time defaults: an image built with no profile key behaves as a host without a config


class SettingsError(ValueError):
    """A bad profile or override; the message names the key and where it came from."""


@dataclass(frozen=True)
class Setting:
    name: str
    type: str  # str | int | bool | list | choice | path
    default: object
    help: str
    profile: bool = True  # may appear in a profile YAML and in --set; False: host-side, given by CLI flags
    image: bool = False  # copied into the image's /etc/appliance/config.json for the app to read at run time
    secret: bool = False  # masked in the dump and never written to manifest.json
    choices: tuple = ()


SETTINGS: tuple[Setting, ...] = (
    # Identity of the image
    Setting("name", "str", "ocr-appliance", "image name: out/<name>-<version>-<profile>.iso"),
    Setting("version", "str", __version__, "image version (default: the appliance package version)"),
    # Debian
    Setting("suite", "str", "trixie", "Debian suite to bootstrap"),
    Setting("mirror", "str", "http://deb.debian.org/debian", "Debian mirror, or a local mirror/apt cache URL"),
    Setting("security_mirror", "str", "http://deb.debian.org/debian-security", "Debian security mirror ('' to skip)"),
    Setting("components", "list", ["main", "contrib", "non-free", "non-free-firmware"], "archive components"),
    Setting("package_lists", "list", ["base", "kiosk"], "package lists from build/packages/<name>.list, in order"),
    Setting("packages", "list", [], "extra Debian packages for the base layer"),
    # Python runtime layer
    Setting("python_version", "str", "3.13", "the image's Python (Debian trixie: 3.13); wheels are fetched for it"),
    Setting("python_extras", "list", ["cpu"], "extras of pyproject.toml installed into the image"),
    Setting("wheelhouse", "path", None, "local directory of wheels: install from it only (no network)"),
    # Layers and boot
    Setting(
        "compression",
        "choice",
        "zstd",
        "squashfs compression (zstd: fast; xz: ~10% smaller, 6x slower)",
        choices=("zstd", "xz"),
    ),
    Setting("kernel_cmdline", "str", "", "extra kernel command line for every boot entry"),
    Setting("boot_timeout", "int", 5, "seconds the boot menu waits"),
    Setting("persistence", "bool", True, "use a partition labelled 'persistence' when one is present"),
    Setting("kiosk", "bool", True, "start the kiosk browser on tty1"),
    Setting("selftest", "bool", True, "report the boot state on the serial console (the boot test reads it)"),
    Setting("usb_image", "bool", False, "also write <name>.img: the ISO plus a persistence partition"),
    Setting(
        "ventoy_dat",
        "bool",
        False,
        "also write <name>-persistence.dat: the persistence filesystem as a file, for Ventoy's persistence plugin",
    ),
    Setting("persistence_size_mb", "int", 1024, "size of the persistence partition in the .img (and of the .dat)"),
    Setting("source_date_epoch", "int", None, "timestamp for every file (default: $SOURCE_DATE_EPOCH or the commit)"),
    # What the appliance does at run time (written into the image)
    Setting("language", "choice", "en", "UI language", image=True, choices=("en", "zh")),
    Setting(
        "default_task",
        "choice",
        RUNTIME.default_task,
        "task preselected in the UI and the API's default task",
        image=True,
        choices=tuple(t.value for t in Task),
    ),
    Setting(
        "outputs",
        "list",
        list(RUNTIME.outputs),
        "export formats offered (UI downloads, the API's default, "
        f"the scan folder's files): {', '.join(OUTPUT_FORMATS)}",
        image=True,
    ),
    Setting(
        "engine",
        "choice",
        RUNTIME.engine,
        "OCR engine",
        image=True,
        choices=("auto", "cpu", "hunyuan-vllm", "hunyuan-transformers"),
    ),
    Setting(
        "lan",
        "bool",
        RUNTIME.lan,
        "also serve the API on the network (DHCP on wired ports); needs lan_token",
        image=True,
    ),
    Setting("lan_token", "str", "", "bearer token the API demands in LAN mode", image=True, secret=True),
    Setting(
        "scanner_discovery",
        "bool",
        True,
        "LAN mode: find network scanners (driverless eSCL/WSD through sane-airscan, mDNS through avahi; multicast "
        "probes on the LAN when the scanner page looks) and USB MFPs that only speak IPP-over-USB (ipp-usb); "
        "off, or outside LAN mode: USB scanners with a SANE driver only, and no multicast",
    ),
    # Scan to folder from office MFPs over SMB (appliance/smb.py; README "Scan to folder from an office MFP")
    Setting(
        "smb",
        "bool",
        False,
        "LAN mode: Samba shares 'scan' (the scan folder's inbox and its task folders) and 'outbox' (read-only) for "
        "office MFPs; needs lan, smb_user and smb_password",
    ),
    Setting("smb_user", "str", "", "the SMB login name MFPs use (letters, digits, . _ -; not a system account)"),
    Setting("smb_password", "str", "", "the SMB login's password (at least 8 characters)", secret=True),
    Setting("smb1", "bool", False, f"also accept SMB1 (off: SMB2 and SMB3 only). UNSAFE: {SMB1_WARNING}"),
    # GPU stack (gpu profile). gpu_stack empty = no GPU stack (the cpu image). Checked by imagebuilder/stack.py
    # before anything is downloaded; the lock's pins can be overridden one by one, and every pair is re-checked.
    Setting(
        "gpu_stack",
        "str",
        "",
        "GPU stack lock from build/locks/ (cuda12-debian-driver, cuda13-user-driver), "
        "or 'custom' with all three versions below; empty: no GPU stack",
    ),
    Setting(
        "nvidia_driver_source",
        "str",
        "debian",
        "NVIDIA driver: 'debian' (550 from non-free) or a directory of NVIDIA's .deb packages (for driver >= 580)",
    ),
    Setting("nvidia_driver_version", "str", None, "expected NVIDIA driver version (checked against the source)"),
    Setting("vllm_version", "str", None, "override the lock's vLLM pin"),
    Setting("torch_version", "str", None, "override the lock's torch pin"),
    Setting("transformers_version", "str", None, "override the lock's transformers pin"),
    Setting("gpu_require_blackwell", "bool", False, "fail the build unless Blackwell GPUs (RTX 50xx) are supported"),
    Setting(
        "nvidia_sign_key",
        "path",
        None,
        "directory with mok.key + mok.pub (DKMS names): sign the NVIDIA modules "
        "for Secure Boot with this site key, enrolled with MOK; unset: unsigned modules",
    ),
    Setting(
        "vllm_compile_cache",
        "path",
        None,
        "directory of vLLM compile caches, one folder per GPU architecture "
        "(sm_89, sm_90 ...), each the VLLM_CACHE_ROOT of a server started once without --enforce-eager on such a "
        "card with this image's model and stack: those cards run vLLM compiled; unset: eager everywhere",
    ),
    Setting(
        "model_version",
        "choice",
        None,
        "HunyuanOCR version in --model DIR: 1.5 (repo root) or 1.0 (v1.0/); needed when DIR has no v1.0/ beside it",
        choices=("1.5", "1.0"),
    ),
    # HunyuanOCR on the CPU (llama.cpp): an image built with --model DIR also gets the model as GGUF files and
    # llama-server (imagebuilder.llamacpp, imagebuilder.model); the cpu profile then offers every task without a GPU.
    Setting(
        "cpu_model",
        "bool",
        True,
        "with --model DIR: also ship HunyuanOCR for the CPU (GGUF files + llama.cpp's server), so a PC without a "
        "usable NVIDIA card runs every task (gpu profile: its fallback); off: save the space",
    ),
    Setting(
        "cpu_model_quant",
        "choice",
        "q8_0",
        "the CPU model's text weights: q8_0 (~0.6 GB, as accurate as f16 in practice), f16 (~2 GB, exact, slowest "
        "decode) or q4_k_m (~0.35 GB, fastest decode, loses accuracy); the vision part stays f16",
        choices=("f16", "q8_0", "q4_k_m"),
    ),
    # Host side: where things go (CLI flags, not profile keys)
    Setting("profile", "str", "cpu", "profile name or path of a profile YAML", profile=False),
    Setting(
        "model_dir",
        "path",
        None,
        "local model directory (--model DIR): gpu profile, and the cpu profile for every task on the CPU",
        profile=False,
    ),
    Setting(
        "accept_model_license",
        "bool",
        False,
        "--accept-model-license: the Tencent Hunyuan Community License "
        "was read and accepted (a per-build act, so not a profile key)",
        profile=False,
    ),
    Setting("out_dir", "path", "out", "where the ISO, SHA256SUMS and manifest.json go", profile=False),
    Setting("cache_dir", "path", "cache", "debs, wheels and layers kept between builds", profile=False),
)
BY_NAME = {s.name: s for s in SETTINGS}


def convert(setting: Setting, raw: object, where: str) -> object:
    """`raw` (a YAML value or a --set string) as the setting's type, or SettingsError naming key and source."""

    def bad(why: str) -> SettingsError:
        return SettingsError(f"{where}: {setting.name}: {why} (got {raw!r})")

    if raw is None:
        return None
    t = setting.type
    if t == "bool":
        if isinstance(raw, bool):
            return raw
        word = str(raw).strip().lower()
        if word in TRUE_WORDS | FALSE_WORDS:
            return word in TRUE_WORDS
        raise bad("expected on/off, true/false, yes/no")
    if t == "int":
        if isinstance(raw, bool):
            raise bad("expected an integer")
        try:
            return int(str(raw).strip())
        except ValueError:
            raise bad("expected an integer") from None
    if t == "list":
        if isinstance(raw, str):
            return [x.strip() for x in raw.split(",") if x.strip()]
        if isinstance(raw, list) and all(isinstance(x, (str, int, float)) for x in raw):
            return [str(x) for x in raw]
        raise bad("expected a list or a comma-separated string")
    if isinstance(raw, (dict, list)):
        raise bad("expected a single value")
    value = str(raw)
    if t == "choice" and value not in setting.choices:
        raise bad(f"expected one of {', '.join(setting.choices)}")
    return value


def _unknown(key: str, where: str) -> SettingsError:
    close = difflib.get_close_matches(key, [s.name for s in SETTINGS if s.profile], n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return SettingsError(f"{where}: unknown setting '{key}'{hint}")


def profile_path(profile: str) -> Path:
    """A profile name (build/profiles/<name>.yaml) or a path to a YAML file."""
    p = Path(profile)
    if p.suffix in (".yaml", ".yml") or "/" in profile:
        return p
    return PROFILES_DIR / f"{profile}.yaml"


def load_profile(profile: str, _seen: tuple = ()) -> dict[str, tuple[object, str]]:
    """{key: (value, source)} from a profile YAML; `extends: other` loads that profile first."""
    path = profile_path(profile)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise SettingsError(f"profile '{profile}' not found ({path}); known profiles: {known}")
    if path.resolve() in _seen:
        raise SettingsError(f"{path}: 'extends' loops back to itself")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SettingsError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected a mapping of settings at the top level")
    values: dict[str, tuple[object, str]] = {}
    parent = data.pop("extends", None)
    if parent:
        base = profile_path(str(parent))
        if not base.is_absolute() and base.parent != PROFILES_DIR:  # a file name: relative to this profile
            base = path.parent / base
        values.update(load_profile(str(base), _seen + (path.resolve(),)))
    for key, raw in data.items():
        setting = BY_NAME.get(str(key))
        if setting is None or not setting.profile:
            raise _unknown(str(key), str(path))
        values[setting.name] = (convert(setting, raw, str(path)), str(path))
    return values


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, tuple[object, str]]:
    """`--set KEY=VALUE` strings -> {key: (value, '--set')}; lists are comma-separated."""
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SettingsError(f"--set {pair}: expected KEY=VALUE")
        setting = BY_NAME.get(key)
        if setting is None or not setting.profile:
            raise _unknown(key, "--set")
        values[key] = (convert(setting, raw, "--set"), "--set")
    return values


class Config:
    """The effective settings of one build: value and source (default, a profile file, --set, a CLI flag)."""

    def __init__(self, values: dict[str, tuple[object, str]]):
        self._values = values

    def __getattr__(self, name: str):
        try:
            return self._values[name][0]
        except KeyError:
            raise AttributeError(name) from None

    def source(self, name: str) -> str:
        return self._values[name][1]

    def as_dict(self, secrets: bool = False) -> dict:
        out = {}
        for s in SETTINGS:
            value = self._values[s.name][0]
            out[s.name] = "***" if (s.secret and value and not secrets) else value
        return out

    def image_config(self) -> dict:
        """What the appliance reads at run time (secrets excluded: they go into a root-only env file)."""
        return {s.name: self._values[s.name][0] for s in SETTINGS if s.image and not s.secret}

    def dump(self) -> str:
        """The effective config, one line per setting, with where each value came from."""
        width = max(len(s.name) for s in SETTINGS)
        lines = []
        for s in SETTINGS:
            value = self.as_dict()[s.name]
            shown = ",".join(value) if isinstance(value, list) else ("" if value is None else value)
            if isinstance(value, bool):
                shown = "on" if value else "off"
            lines.append(f"{s.name:<{width}}  {shown!s:<40}  # {self.source(s.name)}")
        return "\n".join(lines)


def resolve(profile: str = "cpu", overrides=(), **flags) -> Config:
    """Defaults <- profile YAML (and what it extends) <- --set overrides <- CLI flags (None = not given)."""
    values: dict[str, tuple[object, str]] = {s.name: (s.default, "default") for s in SETTINGS}
    values.update(load_profile(profile))
    values.update(parse_overrides(list(overrides)))
    values["profile"] = (profile_path(profile).stem, "--profile")
    for key, raw in flags.items():
        if key not in BY_NAME:
            raise SettingsError(f"internal: unknown flag setting '{key}'")
        if raw is not None:
            values[key] = (convert(BY_NAME[key], raw, f"--{key.replace('_', '-')}"), "flag")
    config = Config(values)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Checks that involve more than one key or more than the type."""
    bad = [o for o in config.outputs if o not in OUTPUT_FORMATS]
    if not config.outputs:
        raise SettingsError(f"{config.source('outputs')}: outputs: at least one format is needed")
    if bad:
        raise SettingsError(
            f"{config.source('outputs')}: outputs: unknown format(s) {', '.join(bad)}; "
            f"choose from {', '.join(OUTPUT_FORMATS)}"
        )
    if config.lan and len(config.lan_token or "") < 8:
        raise SettingsError(
            f"{config.source('lan')}: lan is on but lan_token is missing or shorter than 8 "
            "characters: add --set lan_token=SECRET"
        )
    if config.lan_token and any(c.isspace() or c in "\"'\\$`" for c in config.lan_token):
        raise SettingsError(f"{config.source('lan_token')}: lan_token: no spaces, quotes, '\\', '$' or '`'")
    validate_smb(config)
    for key in ("name", "version"):
        value = getattr(config, key)
        if not value or not all(c.isalnum() or c in "._-+" for c in value):
            raise SettingsError(f"{config.source(key)}: {key}: use letters, digits and . _ - + only (got {value!r})")
    if not config.package_lists:
        raise SettingsError(f"{config.source('package_lists')}: package_lists: at least one list is needed")


# Names an SMB login may not take: the image's own accounts and Debian's system ones (the image's /etc/passwd is
# checked too, when the app layer is built).
RESERVED_USERS = {
    *"root daemon bin sys sync games man lp mail news uucp proxy www-data backup list irc nobody _apt".split(),
    *"messagebus systemd-network systemd-timesync kiosk".split(),
    SMB_ACCOUNT,
}


def validate_smb(config: Config) -> None:
    where = config.source("smb")
    if not config.smb:
        if config.smb1:
            raise SettingsError(f"{config.source('smb1')}: smb1 is on but smb is off")
        return
    if not config.lan:
        raise SettingsError(f"{where}: smb is on but lan is off: the shares are for the network (--set lan=on)")
    user, password = config.smb_user or "", config.smb_password or ""
    if not user or not password:
        raise SettingsError(f"{where}: smb is on: add --set smb_user=NAME --set smb_password=SECRET")
    if not re.fullmatch(r"[a-z_][a-z0-9._-]{0,31}", user) or user.lower() in RESERVED_USERS:
        raise SettingsError(
            f"{config.source('smb_user')}: smb_user: {user!r}: use up to 32 lower-case letters, digits and . _ - "
            "(not starting with a digit, . or -), and not the name of a system account (root, ocr, kiosk, nobody ...)"
        )
    if len(password) < 8 or any(c.isspace() or c in "\"'\\$`" for c in password) or not password.isprintable():
        raise SettingsError(
            f"{config.source('smb_password')}: smb_password: at least 8 characters, no spaces, quotes, '\\', '$' "
            "or '`'"
        )


def table_json() -> str:
    """The table itself, for docs and tooling."""
    return json.dumps([s.__dict__ for s in SETTINGS], indent=1, default=str)
