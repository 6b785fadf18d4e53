"""``sophia-gateway top`` draws what a watched gateway sends as plain text: a group or deployment
name holding rich markup or a terminal's control sequence is shown as written, escaped, never
styling, linking or recolouring the screen."""

from __future__ import annotations

import io

from rich.console import Console

from gateway.top import DeploymentRow, Figures, render


def _screen(group: str, provider: str) -> str:
    row = DeploymentRow(group, provider, "m", 1.0, 0.0, 1.0, 0.5, 12.0, "closed")
    figures = Figures(1.0, 1.0, 1.0, None, None, None, None, None, None, 0.0, [row])
    out = io.StringIO()
    Console(file=out, force_terminal=True, width=200, color_system="truecolor").print(render(figures))
    return out.getvalue()


def test_names_are_shown_as_written_never_as_markup_or_control_sequences() -> None:
    screen = _screen("[red]team[/red]", "evil\x1b]8;;http://x\x07p")
    assert "[red]team[/red]" in screen  # the markup shown, not applied
    assert "\\x1b]8;;http://x\\x07p/m" in screen  # escaped
    assert "\x1b]8;;http" not in screen and "\x07" not in screen  # no hyperlink or bell reaches the terminal


def test_a_long_name_is_cut() -> None:
    screen = _screen("g" * 500, "p")
    assert "g" * 79 + "…" in screen and "g" * 81 not in screen


def test_the_azure_doors_requests_are_client_api_traffic() -> None:
    """A gateway serving only the Azure SDK (/openai/... paths) showed 0 requests/s (an outside
    probe); scrapes, probes and unserved paths are still not counted."""
    from gateway.top import Scrape, figures

    def look(n: int, at_s: float) -> Scrape:
        text = (
            "# TYPE gateway_requests_total counter\n"
            f'gateway_requests_total{{endpoint="/openai/deployments/{{deployment}}/chat/completions",'
            f'model="chat",provider="p",status_code="200"}} {n}\n'
            f'gateway_requests_total{{endpoint="/openai/v1/chat/completions",model="chat",provider="p",'
            f'status_code="502"}} {n // 10}\n'
            f'gateway_requests_total{{endpoint="/metrics",model="",provider="",status_code="200"}} {n}\n'
            f'gateway_requests_total{{endpoint="unmatched",model="",provider="",status_code="404"}} {n}\n'
        )
        return Scrape.parse(text, None, at_s)

    f = figures(look(100, 0.0), look(300, 2.0))
    assert f.requests == 220 and f.requests_per_s == 110
    assert f.error_rate == 20 / 220


def test_tops_own_scrape_is_not_in_flight() -> None:
    """An idle gateway showed ``in flight 1``: the scrape top was making (a newcomer's probe)."""
    from gateway.top import Scrape, figures

    def look(in_flight: int) -> Scrape:
        text = f"# TYPE gateway_requests_in_flight gauge\ngateway_requests_in_flight {in_flight}\n"
        return Scrape.parse(text, None, 0.0)

    assert figures(look(1), look(1)).in_flight == 0
    assert figures(look(1), look(4)).in_flight == 3
