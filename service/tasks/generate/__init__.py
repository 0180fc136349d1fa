"""The text generation room (its modules move here in issue 23's step 6; today: its reference check)."""
