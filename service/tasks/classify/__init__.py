"""The classification room (its modules move here in issue 23's step 5; today: the V2 adapter)."""
