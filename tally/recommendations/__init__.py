"""Recommendations: items viewed together over 7 days, and what each live session is shown
next (docs/recommendations.md)."""
