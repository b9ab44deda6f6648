// swift-tools-version:5.9
// One MLUpdateTask on an export's UpdatableClassifier.mlmodel against `alambic personalize`'s
// off-device update of the same rows, on a Mac (Core ML updates run on Apple platforms only):
//   ALAMBIC_BUNDLE=/path/to/export ALAMBIC_PERSONALIZED=/path/to/export-personalized \
//     swift test --package-path examples/ios/UpdateCheck
// Written without a Mac or a Swift toolchain: not compiled or run where it was written
// (examples/ios/README.md, "Checking the on-device update on a Mac").
import PackageDescription

let package = Package(
    name: "UpdateCheck",
    platforms: [.macOS(.v13), .iOS(.v16)],
    targets: [
        // Core ML, CryptoKit and XCTest come with the SDK: no package dependencies
        .testTarget(name: "UpdateCheckTests"),
    ]
)
