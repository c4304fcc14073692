"""ScreenSpot-v2: grounding on mobile, desktop and web screenshots, official and reference aggregates."""
