"""ScreenSpot-Pro: grounding on high-resolution professional screenshots."""
