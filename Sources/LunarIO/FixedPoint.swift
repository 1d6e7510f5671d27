/// `value` with `places` digits after the point, rounded half away from zero: "%.Nf" for the
/// modules that keep Foundation out of the VMM process (Sources/lunar-vmm).
public func fixedPoint(_ value: Double, places: Int) -> String {
    guard value.isFinite else { return "\(value)" }
    let places = max(0, min(places, 9))
    var scale: UInt64 = 1
    for _ in 0..<places { scale *= 10 }
    let magnitude = (abs(value) * Double(scale)).rounded()
    guard magnitude < 9.2e18 else { return "\(value)" }
    let scaled = UInt64(magnitude)
    let whole = "\(scaled / scale)"
    let sign = value < 0 && scaled != 0 ? "-" : ""
    guard places > 0 else { return sign + whole }
    let fraction = String(scaled % scale)
    return sign + whole + "." + String(repeating: "0", count: places - fraction.count) + fraction
}
