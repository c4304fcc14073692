"""AndroidControl: TFRecord and driver-JSON loaders, both scorers, the reference drivers' protocol."""
