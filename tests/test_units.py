from engine.units import GIB, MIB, display_unit, format_bytes, unit_note


def test_display_unit_picks_the_largest_unit_that_keeps_the_value_at_least_one():
    assert display_unit(0) == (1, "bytes")
    assert display_unit(1023) == (1, "bytes")
    assert display_unit(1024) == (1024, "KiB")
    assert display_unit(311 * MIB) == (MIB, "MiB")
    assert display_unit(80 * GIB) == (GIB, "GiB")
    assert display_unit(120e9, decimal=True) == (10**9, "GB")
    assert display_unit(3e15, decimal=True) == (10**15, "PB")


def test_format_bytes_and_notes_name_their_unit():
    assert format_bytes(1.5 * GIB) == "1.50 GiB"
    assert format_bytes(1020 * MIB) == "1,020 MiB"  # between 1000 and 1023 of a unit: no exponent
    assert format_bytes(123.456 * MIB, digits=4) == "123.5 MiB"
    assert format_bytes(512) == "512 bytes"
    assert format_bytes(16.6e9, decimal=True) == "16.6 GB"
    assert unit_note("GiB") == "GiB = 2^30 bytes"
    assert unit_note("GB") == "GB = 1e9 bytes"
    assert unit_note("KiB") == "KiB = 2^10 bytes"
