"""Generated run names: two readable words, ``adjective-noun``, as Simvue makes them."""

from __future__ import annotations

import hashlib
import secrets

__all__ = ["generate_run_name", "name_for_key"]

_ADJECTIVES = """
able agile amber ancient azure bold brave bright brisk calm candid clever cosmic crimson
curious daring dazzling eager early electric elegant emerald epic fearless fiery fluent
frosty gentle gifted glad golden graceful grand happy hardy hidden humble icy jolly keen
kind lively lucid lunar magnetic mellow merry mighty misty modest noble nimble oaken patient
placid polar proud quick quiet radiant rapid rare regal robust rosy rustic scarlet serene
sharp shiny silent silver sleek smooth snowy solar sonic spry steady stellar stoic sunny
swift tidy tranquil upbeat valiant vast velvet vivid warm wise witty zealous zesty
""".split()

_NOUNS = """
albatross anchor aurora badger beacon bison boulder breeze canyon cascade comet condor coral
cosmos crater crystal cypress delta dolphin dune eagle ember falcon fern fjord flame forest
fox galaxy geyser glacier granite harbor hawk heron horizon island jaguar lagoon lantern
lark lichen lynx magnet maple meadow meteor mistral nebula oak ocean orbit orchid osprey
otter panther pebble photon pine planet plateau pulsar quasar raven reef river rocket
sequoia shore sparrow spruce star stream summit tempest thunder tide tiger topaz tundra
valley vortex walrus willow wolf zenith zephyr
""".split()


def generate_run_name() -> str:
    """A random ``adjective-noun`` name, e.g. ``swift-nebula`` (about 10,000 combinations)."""
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}"


def name_for_key(key: str) -> str:
    """An ``adjective-noun`` name derived from a run key: every process and bridge replica
    that has to name the same unnamed run gives it the same name."""
    digest = hashlib.sha256(key.encode()).digest()
    adjective = int.from_bytes(digest[:4], "big") % len(_ADJECTIVES)
    noun = int.from_bytes(digest[4:8], "big") % len(_NOUNS)
    return f"{_ADJECTIVES[adjective]}-{_NOUNS[noun]}"
