"""Location coupons: campaigns by zone, one coupon per user and campaign pushed while it is
worth something, redemptions closing the loop (docs/coupons.md)."""
