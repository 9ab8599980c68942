import pytest

from softmaxlab.activations import ACTIVATIONS
from softmaxlab.data import DATASETS
from softmaxlab.errors import UserError
from softmaxlab.heads import HEADS
from softmaxlab.models import MODELS
from softmaxlab.registry import Registry, UnknownNameError


def make() -> Registry:
    reg: Registry = Registry("widget")

    @reg.register("plain")
    def plain(x: int = 1) -> int:
        """A plain widget.

        More text that is not the summary."""
        return x

    @reg.register("fancy", summary="the fancy one")
    class Fancy:
        def __init__(self, size: int) -> None:
            self.size = size

    return reg


def test_register_create_list():
    reg = make()
    assert reg.names() == ["plain", "fancy"]
    assert reg.create("plain", 5) == 5
    assert reg.create("fancy", size=3).size == 3
    assert "plain" in reg and "nope" not in reg
    assert len(reg) == 2 and list(reg) == ["plain", "fancy"]


def test_summary_is_first_docstring_line_or_given():
    reg = make()
    assert reg.summary("plain") == "A plain widget."
    assert reg.summary("fancy") == "the fancy one"


def test_unknown_name_lists_valid_names_and_closest():
    reg = make()
    with pytest.raises(UnknownNameError) as info:
        reg.create("plian")
    msg = str(info.value)
    assert "unknown widget 'plian'" in msg and "did you mean 'plain'" in msg and "plain, fancy" in msg
    assert isinstance(info.value, UserError) and isinstance(info.value, KeyError)


def test_duplicate_registration_is_refused():
    reg = make()
    with pytest.raises(ValueError, match="already registered"):
        reg.register("plain")(lambda: 0)


@pytest.mark.parametrize("registry", [HEADS, ACTIVATIONS, MODELS, DATASETS], ids=lambda r: r.kind)
def test_every_extension_point_has_entries_with_summaries(registry):
    assert len(registry) >= 1
    for name in registry:
        assert registry.summary(name), f"{registry.kind} {name!r} has no summary for `softmaxlab list`"


def test_a_family_resolves_every_name_of_its_pattern_after_the_entries():
    from softmaxlab.registry import Options

    class Shade(Options):
        level: int = 0

    reg = make()
    reg.register_family("grey:<n>", lambda n: n.startswith("grey:"), options=Shade, suggest=lambda n: f"grey:{n}")(
        lambda name, x=0: (name, x)
    )
    assert reg.create("grey:7", x=2) == ("grey:7", 2) and "grey:7" in reg and "grey" not in reg
    assert reg.options("grey:7") is Shade and reg.options("plain").model_fields == {}
    assert reg.names() == ["plain", "fancy"] and [f.label for f in reg.families()] == ["grey:<n>"]
    assert [name for name, _ in reg.choices()] == ["plain", "fancy", "grey:<n>"]
    with pytest.raises(
        UnknownNameError, match=r"unknown widget 'dark' \(did you mean 'grey:dark'\?\); valid: .*grey:<n>"
    ):
        reg.get("dark")
    reg.unregister("grey:<n>")
    assert "grey:7" not in reg


def test_the_bare_decorator_registers_at_once_instead_of_silently_not_at_all():
    reg = make()

    @reg.register
    def bare() -> int:
        """A bare one."""
        return 3

    assert reg.create("bare") == 3 and reg.summary("bare") == "A bare one."
    with pytest.raises(TypeError, match="string name"):
        reg.register(3)
